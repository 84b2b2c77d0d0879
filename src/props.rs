// SPDX-License-Identifier: MPL-2.0
//! The properties both elements share: where the server is, how many connections the
//! plugin-global pool may open to it, and how long to wait for it.

use gst::glib;
use gst::prelude::*;

pub const DEFAULT_HOST: &str = "localhost";
pub const DEFAULT_PORT: u32 = 6381;
pub const DEFAULT_POOL_SIZE: u32 = 3;
/// The real server serves at most 199 clients at once (contract section 1).
pub const MAX_POOL_SIZE: u32 = 199;
pub const DEFAULT_TIMEOUT_MS: u32 = 5000;

/// `host`, `port`, `pool-size` and `timeout`, in that order.
pub fn server_properties() -> [glib::ParamSpec; 4] {
    [
        glib::ParamSpecString::builder("host")
            .nick("Host")
            .blurb("Host name or IP address of the RACS server")
            .default_value(Some(DEFAULT_HOST))
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("port")
            .nick("Port")
            .blurb("TCP port of the RACS server")
            .minimum(1)
            .maximum(65535)
            .default_value(DEFAULT_PORT)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("pool-size")
            .nick("Pool size")
            .blurb(
                "Most connections open at once to this server, shared by every racssink and \
                 racssrc in the process (the largest value asked for wins)",
            )
            .minimum(1)
            .maximum(MAX_POOL_SIZE)
            .default_value(DEFAULT_POOL_SIZE)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("timeout")
            .nick("Timeout")
            .blurb("Milliseconds to wait for a connection or for each reply")
            .minimum(1)
            .default_value(DEFAULT_TIMEOUT_MS)
            .mutable_ready()
            .build(),
    ]
}
