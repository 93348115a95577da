//! The protocol: prost messages and tonic stubs generated from `dlm/proto/dlm.proto`,
//! plus conversions between wire and engine types.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("rgfs.dlm.v1");
}
mod convert;
pub mod framing;
pub mod poll_window;
pub mod socket;

pub use convert::*;
pub use generated::*;
