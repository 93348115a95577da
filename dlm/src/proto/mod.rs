//! Generated protobuf messages and gRPC stubs of `dlm/proto/dlm.proto`.
#![allow(missing_docs, clippy::all)]
tonic::include_proto!("rgfs.dlm.v1");
