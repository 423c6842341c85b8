//! Little-endian integers as they sit in guest memory.
//!
//! Virtio 1.x structures are little-endian whatever the host's byte order
//! (spec 1.4 "Structure Specifications"). These wrappers keep the stored
//! bytes little-endian and convert on access, so a `#[repr(C)]` layout built
//! from them matches the spec byte for byte on any host.

macro_rules! le_int {
    ($name:ident, $native:ty, $bytes:literal) => {
        #[doc = concat!("A `", stringify!($native), "` stored little-endian (", stringify!($bytes), " bytes).")]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        #[repr(transparent)]
        pub struct $name($native);

        impl $name {
            /// Wraps a native value, storing it little-endian.
            #[inline]
            pub const fn new(value: $native) -> Self {
                Self(value.to_le())
            }
            /// Returns the native value.
            #[inline]
            pub const fn get(self) -> $native {
                <$native>::from_le(self.0)
            }
            /// Builds from the raw little-endian bytes.
            #[inline]
            pub const fn from_bytes(bytes: [u8; $bytes]) -> Self {
                Self::new(<$native>::from_le_bytes(bytes))
            }
            /// Returns the raw little-endian bytes.
            #[inline]
            pub const fn to_bytes(self) -> [u8; $bytes] {
                self.get().to_le_bytes()
            }
        }

        impl From<$native> for $name {
            #[inline]
            fn from(value: $native) -> Self {
                Self::new(value)
            }
        }

        impl From<$name> for $native {
            #[inline]
            fn from(value: $name) -> Self {
                value.get()
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Debug::fmt(&self.get(), f)
            }
        }
    };
}

le_int!(Le16, u16, 2);
le_int!(Le32, u32, 4);
le_int!(Le64, u64, 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_little_endian() {
        assert_eq!(Le16::new(0x1234).to_bytes(), [0x34, 0x12]);
        assert_eq!(Le32::new(0x1234_5678).to_bytes(), [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(
            Le64::from_bytes([1, 0, 0, 0, 0, 0, 0, 0x80]).get(),
            0x8000_0000_0000_0001
        );
    }
}
