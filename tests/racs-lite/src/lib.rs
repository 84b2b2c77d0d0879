//! racs-lite
