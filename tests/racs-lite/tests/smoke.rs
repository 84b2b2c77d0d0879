// SPDX-License-Identifier: MPL-2.0
//! Quick end-to-end checks of the library API.

use racs_lite::client::{build_frame, show, RawClient};
use racs_lite::harness::AnyServer;
use racs_lite::TestServer;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn ping_and_contract_vectors() {
    // On racs-lite, or on a fresh real server with RACS_BIN.
    let srv = AnyServer::start();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    c.send_raw(&hex("0500000000000000 50494e4700")).unwrap();
    assert_eq!(c.read_reply().unwrap(), hex("92a6737472696e67a4504f4e47"));
    assert_eq!(
        show(&c.command("CREATE 'chopin' 44100 2 16").unwrap()),
        r#"["null"]"#
    );
    assert_eq!(show(&c.command("OPEN 'chopin'").unwrap()), r#"["null"]"#);
    assert_eq!(
        c.command_raw("OPEN 'chopin'").unwrap(),
        [hex("92a56572726f72b6"), b"Stream is already open".to_vec()].concat()
    );
    assert_eq!(
        c.command_raw("INFO 'chopin' 'sample_rate'").unwrap(),
        hex("92a3696e74cdac44")
    );
    let frame = hex(
        "727370 0102030405060708090a0b0c0d0e0f10 45dd41503090e933 7b9586db 0800 00 0000e80318fcff7f",
    );
    let session: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    assert_eq!(
        build_frame(&session, b"chopin", &hex("0000e80318fcff7f")),
        frame
    );
    c.send_raw(&[hex("2a00000000000000"), frame].concat())
        .unwrap();
    assert_eq!(c.read_reply().unwrap(), hex("91a46e756c6c"));
    let r = c.command("EXTRACT 'chopin' 0 9999999999999").unwrap();
    let bin = r[0].as_array().unwrap()[1].as_slice().unwrap().to_vec();
    let expect: Vec<u8> = [0i32, 1000, -1000, 32767]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(bin, expect);
}

#[test]
fn durable_restart_keeps_acknowledged_data() {
    // The library API (TestServer, always racs-lite), with the option that keeps data across
    // stops.
    let mut srv = TestServer::start_with(|c| {
        c.entries = 4;
        c.durable = true;
    });
    let session = [7u8; 16];
    {
        let mut c = RawClient::connect(srv.addr()).unwrap();
        c.command("CREATE 'r' 8000 1 16").unwrap();
        c.command("OPEN 'r'").unwrap();
        for i in 0..10u8 {
            let pcm = vec![i; 160];
            assert_eq!(
                show(&c.frame(&build_frame(&session, b"r", &pcm)).unwrap()),
                r#"["null"]"#
            );
        }
    }
    srv.restart();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    let r = c.command("EXTRACT 'r' 0 9999999999999").unwrap();
    assert_eq!(
        r[0].as_array().unwrap()[1].as_slice().unwrap().len(),
        10 * 80 * 4
    );
    assert_eq!(
        show(&c.command("INFO 'r' 'size'").unwrap()),
        r#"["int", 1600]"#
    );
}

#[test]
fn default_stop_loses_the_in_memory_table() {
    // Also on a real server with RACS_BIN (which has no clean stop).
    let mut srv = AnyServer::start();
    {
        let mut c = RawClient::connect(srv.addr()).unwrap();
        c.command("CREATE 'r' 8000 1 16").unwrap();
        c.command("OPEN 'r'").unwrap();
        let r = c.frame(&build_frame(&[7; 16], b"r", &[1; 160])).unwrap();
        assert_eq!(show(&r), r#"["null"]"#);
    }
    srv.restart();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    let r = c.command("EXTRACT 'r' 0 9999999999999").unwrap();
    assert_eq!(show(&r), r#"["s32v", []]"#);
    assert_eq!(
        show(&c.command("INFO 'r' 'size'").unwrap()),
        r#"["error", "Failure reading metadata"]"#
    );
}

#[test]
fn flush_invisibility_can_be_reproduced() {
    // A table being written is missing from EXTRACT for a while (100 ms by default), then
    // comes back, as on the real server.
    let srv = AnyServer::start_with(|c| {
        c.entries = 2;
        c.flush_invisible = std::time::Duration::from_millis(300);
    });
    if !srv.needs_lite("a write window of a known length") {
        return;
    }
    let mut c = RawClient::connect(srv.addr()).unwrap();
    c.command("CREATE 'f' 8000 1 16").unwrap();
    c.command("OPEN 'f'").unwrap();
    let session = [9u8; 16];
    // Three 100 ms blocks: the third append flushes a table holding the first two.
    for _ in 0..3 {
        let r = c.frame(&build_frame(&session, b"f", &[0u8; 1600])).unwrap();
        assert_eq!(show(&r), r#"["null"]"#);
    }
    let samples = |c: &mut RawClient| {
        let r = c.command("EXTRACT 'f' 0 9999999999999").unwrap();
        r[0].as_array().unwrap()[1].as_slice().unwrap().len() / 4
    };
    assert_eq!(samples(&mut c), 800, "only the in-memory block is visible");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while samples(&mut c) != 2400 {
        assert!(
            std::time::Instant::now() < deadline,
            "the table never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
