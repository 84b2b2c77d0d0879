//! Restart behaviour: clean stop keeps everything acknowledged; kill behaves like `kill -9`
//! on the real server; SHUTDOWN stops cleanly without a reply; file names never come from ids.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use racs_lite::client::RawClient;
use racs_lite::TestServer;

fn write_blocks(c: &mut RawClient, id: &str, n: usize) {
    for k in 0..n {
        let pcm = pcm16(&vec![k as i16; 800]);
        assert_eq!(send_frame(c, &[9; 16], id, &pcm), NULL, "block {k}");
    }
}

fn all(c: &mut RawClient, id: &str) -> Vec<i32> {
    extract(c, id, "0", "99999999999999")
}

fn closed_by_server(c: &mut RawClient) -> bool {
    let mut b = [0u8; 1];
    matches!(c.stream.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn clean_stop_keeps_everything_acknowledged() {
    let mut srv = TestServer::start_with(|c| c.entries = 4);
    let (ref0, size0);
    {
        let mut c = RawClient::connect(srv.addr()).unwrap();
        create_open(&mut c, "keep", 8000, 1, 16);
        write_blocks(&mut c, "keep", 10); // 2 tables handed to the writer + 2 blocks in memory
        ref0 = info(&mut c, "keep", "ref").unwrap();
        size0 = info(&mut c, "keep", "size").unwrap();
        assert_eq!(size0, 16_000);
        srv.stop();
        assert!(closed_by_server(&mut c), "stop closes connections");
    }
    assert!(!srv.is_running());
    srv.restart();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    assert_eq!(all(&mut c, "keep").len(), 10 * 800);
    assert_eq!(info(&mut c, "keep", "ref"), Some(ref0));
    assert_eq!(info(&mut c, "keep", "size"), Some(size0));
    assert_eq!(info(&mut c, "keep", "sample_rate"), Some(8000));
    // OPEN state is lost.
    assert_eq!(
        send_frame(&mut c, &[9; 16], "keep", &pcm16(&[1])),
        err("Stream is closed or currently in use.")
    );
    // Appends continue the old virtual timeline: the next block is keyed ref + 1000 ms.
    assert_eq!(cmd(&mut c, "OPEN 'keep'"), NULL);
    assert_eq!(
        send_frame(&mut c, &[9; 16], "keep", &pcm16(&[42; 800])),
        NULL
    );
    let t = (ref0 + 1000).to_string();
    assert_eq!(extract(&mut c, "keep", &t, &t), vec![42; 800]);
    // And it all survives a second restart.
    drop(c);
    srv.restart();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    assert_eq!(all(&mut c, "keep").len(), 11 * 800);
}

#[test]
fn kill_loses_the_in_memory_table_and_unpersisted_metadata() {
    let mut srv = TestServer::start_with(|c| c.entries = 4);
    let ref0;
    {
        let mut c = RawClient::connect(srv.addr()).unwrap();
        create_open(&mut c, "p1", 8000, 1, 16);
        write_blocks(&mut c, "p1", 10); // tables of 4 flushed at appends 5 and 9
        ref0 = info(&mut c, "p1", "ref").unwrap();
    }
    srv.kill();
    srv.restart();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    // Flushed blocks survive at their old times; the last 2 (in memory) are lost.
    let got = all(&mut c, "p1");
    assert_eq!(got.len(), 8 * 800);
    assert_eq!(got[7 * 800], 7);
    // size and ref revert to the values persisted at CREATE (0: INFO errors).
    assert_eq!(info(&mut c, "p1", "size"), None);
    assert_eq!(info(&mut c, "p1", "ref"), None);
    assert_eq!(info(&mut c, "p1", "channels"), Some(1));
    // The next frame after OPEN gets a new ref = now.
    let deadline = Instant::now() + Duration::from_secs(5);
    while racs_lite::timefmt::now_ms() <= ref0 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    assert_eq!(cmd(&mut c, "OPEN 'p1'"), NULL);
    assert_eq!(send_frame(&mut c, &[9; 16], "p1", &pcm16(&[5; 800])), NULL);
    let ref1 = info(&mut c, "p1", "ref").unwrap();
    assert!(ref1 > ref0, "new ref {ref1} after old {ref0}");
    let t = ref1.to_string();
    assert_eq!(extract(&mut c, "p1", &t, &t), vec![5; 800]);
}

#[test]
fn shutdown_command_stops_cleanly_without_reply() {
    let mut srv = TestServer::start();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    create_open(&mut c, "p2", 8000, 1, 16);
    write_blocks(&mut c, "p2", 5);
    c.send_message(b"SHUTDOWN\0").unwrap();
    assert!(closed_by_server(&mut c), "SHUTDOWN sends no reply");
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.is_running() {
        assert!(
            Instant::now() < deadline,
            "server did not stop after SHUTDOWN"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    srv.restart();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    assert_eq!(all(&mut c, "p2").len(), 5 * 800);
    assert_eq!(info(&mut c, "p2", "size"), Some(8000));
}

#[test]
fn stream_ids_never_become_file_names() {
    let mut srv = TestServer::start_with(|c| c.entries = 2);
    let ids = ["../../escape", "/etc/passwd", "a/b", ".", "..", "", r"x\'y"];
    {
        let mut c = RawClient::connect(srv.addr()).unwrap();
        for id in ids {
            create_open(&mut c, id, 8000, 1, 16);
            write_blocks(&mut c, id, 3);
        }
    }
    srv.restart();
    let md = srv.data_dir().join(".racs").join("md");
    for e in std::fs::read_dir(&md).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            name.parse::<u64>().is_ok(),
            "unexpected metadata file {name}"
        );
    }
    let top: Vec<String> = std::fs::read_dir(srv.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(top, vec![".racs".to_string()]);
    let mut c = RawClient::connect(srv.addr()).unwrap();
    for id in ids {
        assert_eq!(all(&mut c, id).len(), 3 * 800, "{id:?}");
    }
}

#[test]
fn tables_with_the_same_first_key_do_not_overwrite_each_other() {
    // 400 one-sample frames share a handful of ms keys; with 4-entry tables the real server
    // overwrote files with equal names and lost blocks. racs-lite keeps them all.
    let mut srv = TestServer::start_with(|c| c.entries = 4);
    {
        let mut c = RawClient::connect(srv.addr()).unwrap();
        create_open(&mut c, "tiny", 44100, 1, 16);
        for k in 0..400i16 {
            assert_eq!(send_frame(&mut c, &[1; 16], "tiny", &pcm16(&[k])), NULL);
        }
    }
    srv.restart();
    let mut c = RawClient::connect(srv.addr()).unwrap();
    assert_eq!(all(&mut c, "tiny"), (0..400).collect::<Vec<i32>>());
}

#[test]
fn restart_rebinds_the_same_port_with_clients_connected() {
    let mut srv = TestServer::start();
    let port = srv.port();
    let mut clients: Vec<RawClient> = (0..5)
        .map(|_| RawClient::connect(srv.addr()).unwrap())
        .collect();
    for c in &mut clients {
        assert_eq!(cmd(c, "PING"), PONG);
    }
    srv.kill();
    assert!(closed_by_server(&mut clients[0]), "kill closes connections");
    srv.restart();
    assert_eq!(srv.port(), port);
    assert_eq!(srv.host(), "127.0.0.1");
    let mut c = RawClient::connect(srv.addr()).unwrap();
    assert_eq!(cmd(&mut c, "PING"), PONG);
}

#[test]
fn server_works_inside_another_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut srv = TestServer::start();
        let mut c = RawClient::connect(srv.addr()).unwrap();
        assert_eq!(cmd(&mut c, "PING"), PONG);
        srv.restart();
        drop(srv);
    });
}
