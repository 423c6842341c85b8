//! Unit tests of the device-role split virtqueue.
