// SPDX-License-Identifier: MPL-2.0
//! Many simultaneous connections against a limit: the excess is refused cleanly and the
//! server keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::*;
use racs_lite::client::RawClient;
use racs_lite::harness::AnyServer;

/// PING on a fresh or existing connection: Some(true) = PONG, Some(false) = refused/closed.
fn ping(c: &mut RawClient) -> bool {
    match c.command("PING") {
        Ok(v) => racs_lite::client::show(&v) == PONG,
        Err(_) => false,
    }
}

#[test]
fn three_hundred_connections_against_a_limit_of_200() {
    let srv = AnyServer::start_with(|c| c.max_connections = 200);
    if !srv.needs_lite("max_connections; a real server overflows its 200 slots") {
        return;
    }
    // Open all 300 first, then talk on each: exactly 200 are served.
    let mut conns: Vec<RawClient> = (0..300)
        .map(|_| RawClient::connect(srv.addr()).expect("TCP connect"))
        .collect();
    for c in &mut conns {
        c.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
    }
    let served: Vec<bool> = conns.iter_mut().map(ping).collect();
    let ok = served.iter().filter(|s| **s).count();
    assert_eq!(ok, 200, "served connections");
    // The accepted ones keep working, including streaming.
    let mut live: Vec<RawClient> = conns
        .into_iter()
        .zip(served)
        .filter_map(|(c, s)| s.then_some(c))
        .collect();
    create_open(&mut live[0], "many", 8000, 1, 16);
    for c in live.iter_mut().take(50) {
        assert_eq!(send_frame(c, &[0; 16], "many", &pcm16(&[1; 80])), NULL);
    }
    assert_eq!(info(&mut live[1], "many", "size"), Some(50 * 160));
    for c in live.iter_mut().step_by(7) {
        assert!(ping(c));
    }
    // Closing some frees their slots: new connections are served again.
    live.truncate(150);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fresh = Vec::new();
    while fresh.len() < 50 {
        assert!(
            Instant::now() < deadline,
            "slots not released: {} new connections served",
            fresh.len()
        );
        let mut c = RawClient::connect(srv.addr()).unwrap();
        if ping(&mut c) {
            fresh.push(c);
        }
    }
    // Now full again: the next one is refused, the old ones still answer.
    let mut extra = RawClient::connect(srv.addr()).unwrap();
    assert!(!ping(&mut extra), "the 201st connection must be refused");
    assert!(ping(&mut live[0]));
    assert!(ping(&mut fresh[0]));
}
