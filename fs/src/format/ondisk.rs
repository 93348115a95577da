//! The two-step decoding every on-disk structure follows.
//!
//! Step 1: bytes become a `Raw` view — the exact C layout of
//! `linux/gfs2_ondisk.h` with big-endian fields (a `zerocopy` type, so the
//! only thing checked is the length). Step 2: [`OnDisk::verify`] checks
//! magic, type, format, lengths and checksums and returns the native value.
//! The rest of rgfs works on native values; a `Raw` view is for tools that
//! must look at damaged structures (fsck, dumps).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{FormatError, Result};

/// Big-endian field types of the raw layouts.
pub use zerocopy::byteorder::big_endian::{U16 as Be16, U32 as Be32, U64 as Be64};

/// An on-disk structure with a fixed-size C layout.
pub trait OnDisk: Sized {
    /// The C layout, fields big-endian.
    type Raw: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned;
    /// A name for error messages.
    const NAME: &'static str;
    /// Size of the C layout in bytes.
    const SIZE: usize = core::mem::size_of::<Self::Raw>();

    /// Step 2: checks a raw view and converts it to the native value.
    fn verify(raw: &Self::Raw) -> Result<Self>;

    /// The raw layout of this value (padding zeroed).
    fn to_raw(&self) -> Self::Raw;

    /// Step 1: views the first [`Self::SIZE`] bytes as the raw layout.
    fn raw(bytes: &[u8]) -> Result<&Self::Raw> {
        Self::Raw::ref_from_prefix(bytes)
            .map(|(raw, _)| raw)
            .map_err(|_| FormatError::TooShort {
                what: Self::NAME,
                need: Self::SIZE,
                have: bytes.len(),
            })
    }

    /// Both steps: bytes to a verified value.
    fn decode(bytes: &[u8]) -> Result<Self> {
        Self::verify(Self::raw(bytes)?)
    }

    /// Writes the structure into the first [`Self::SIZE`] bytes of `out`.
    ///
    /// Panics if `out` is shorter: buffers are sized by rgfs, never by input.
    fn encode_into(&self, out: &mut [u8]) {
        assert!(
            out.len() >= Self::SIZE,
            "{}: buffer of {} bytes, need {}",
            Self::NAME,
            out.len(),
            Self::SIZE
        );
        out[..Self::SIZE].copy_from_slice(self.to_raw().as_bytes());
    }

    /// The encoded bytes.
    fn to_bytes(&self) -> Vec<u8> {
        self.to_raw().as_bytes().to_vec()
    }
}

/// Asserts at compile time that a raw layout has the size of its C struct.
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
    };
}
pub(crate) use assert_size;
