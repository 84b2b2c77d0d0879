//! The RACS protocol, free of GStreamer types.
