// SPDX-License-Identifier: MPL-2.0
//! Restart behaviour, like a real RACS v0.1.0 server by default: a kill (and a stop, which is
//! the same on the real server) loses the in-memory table and the metadata newer than its last
//! persisted version; SHUTDOWN persists metadata and then loses the in-memory table; LRU
//! eviction persists metadata. Each case runs on racs-lite, or on a fresh real server per test
//! with `RACS_BIN`; the `durable` option and racs-lite's file layout are racs-lite only.

mod common;

use std::time::{Duration, Instant};

use common::*;
use racs_lite::client::RawClient;
use racs_lite::harness::AnyServer;

fn write_blocks(c: &mut RawClient, id: &str, n: usize) {
    write_blocks_from(c, id, 0, n);
}

/// Blocks `first..first + n`: 100 ms each (8000 Hz mono 16-bit), every sample holding k.
fn write_blocks_from(c: &mut RawClient, id: &str, first: usize, n: usize) {
    for k in first..first + n {
        let pcm = pcm16(&vec![k as i16; 800]);
        assert_eq!(send_frame(c, &[9; 16], id, &pcm), NULL, "block {k}");
    }
}

fn all(c: &mut RawClient, id: &str) -> Vec<i32> {
    extract(c, id, "0", "99999999999999")
}

/// The block numbers of an EXTRACT of [`write_blocks`] output.
fn blocks(v: &[i32]) -> Vec<i32> {
    assert_eq!(v.len() % 800, 0, "whole blocks only");
    v.chunks(800).map(|b| b[0]).collect()
}

fn connect(srv: &AnyServer) -> RawClient {
    RawClient::connect(srv.addr()).unwrap()
}

/// Wait until the wall clock is past `t` (ms since the epoch).
fn wait_past(t: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while racs_lite::timefmt::now_ms() <= t {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
}

/// Kill (or stop) after 10 blocks in tables of 4: the two flushed tables survive, the last
/// 2 blocks (in memory) are lost, size and ref revert to CREATE's (INFO errors), and the next
/// frame after OPEN starts a new epoch at a new ref while the old blocks stay at their times.
fn loses_like_a_kill(stop: impl FnOnce(&mut AnyServer)) {
    let mut srv = AnyServer::start_with(|c| c.entries = 4);
    let ref0;
    {
        let mut c = connect(&srv);
        create_open(&mut c, "p1", 8000, 1, 16);
        write_blocks(&mut c, "p1", 10); // tables of 4 handed to the writer at appends 5 and 9
        ref0 = info(&mut c, "p1", "ref").unwrap();
        assert_eq!(info(&mut c, "p1", "size"), Some(16_000));
        // Tables being written are lost too: wait until both are on disk (visible).
        assert_eq!(wait_visible(&mut c, "p1", 10 * 800).len(), 10 * 800);
        stop(&mut srv);
        assert!(closed_by_server(&mut c), "the server closed the connection");
    }
    srv.start_again();
    let mut c = connect(&srv);
    assert_eq!(blocks(&all(&mut c, "p1")), (0..8).collect::<Vec<_>>());
    assert_eq!(info(&mut c, "p1", "size"), None);
    assert_eq!(info(&mut c, "p1", "ref"), None);
    assert_eq!(info(&mut c, "p1", "channels"), Some(1));
    // OPEN state is lost.
    assert_eq!(
        send_frame(&mut c, &[9; 16], "p1", &pcm16(&[1])),
        err("Stream is closed or currently in use.")
    );
    wait_past(ref0);
    assert_eq!(cmd(&mut c, "OPEN 'p1'"), NULL);
    write_blocks_from(&mut c, "p1", 20, 1);
    let ref1 = info(&mut c, "p1", "ref").unwrap();
    assert!(ref1 > ref0, "new ref {ref1} after old {ref0}");
    let t = ref1.to_string();
    assert_eq!(blocks(&extract(&mut c, "p1", &t, &t)), vec![20]);
    // The old epoch is still readable at its old times (from its first table's name on).
    let old = blocks(&extract(
        &mut c,
        "p1",
        &ref0.to_string(),
        &(ref0 + 100).to_string(),
    ));
    assert!(old.starts_with(&[0, 1]), "{old:?}");
}

#[test]
fn kill_loses_the_in_memory_table_and_unpersisted_metadata() {
    loses_like_a_kill(|s| s.kill());
}

#[test]
fn stop_loses_what_a_kill_loses() {
    // racs-lite's default stop; a real server has no signal handler (the harness kills it).
    loses_like_a_kill(|s| s.stop());
}

#[test]
fn shutdown_persists_metadata_and_loses_the_in_memory_table() {
    let mut srv = AnyServer::start();
    let ref0;
    {
        let mut c = connect(&srv);
        create_open(&mut c, "p2", 8000, 1, 16);
        write_blocks(&mut c, "p2", 5); // all in the in-memory table (40 entries)
        ref0 = info(&mut c, "p2", "ref").unwrap();
        assert_eq!(blocks(&all(&mut c, "p2")), vec![0, 1, 2, 3, 4]);
    }
    srv.shutdown();
    srv.start_again();
    let mut c = connect(&srv);
    // size counts the lost blocks; the data is gone.
    assert_eq!(info(&mut c, "p2", "size"), Some(8000));
    assert_eq!(info(&mut c, "p2", "ref"), Some(ref0));
    assert_eq!(all(&mut c, "p2"), Vec::<i32>::new());
    // Appends continue the old virtual timeline: the next block is keyed ref + 500 ms.
    assert_eq!(cmd(&mut c, "OPEN 'p2'"), NULL);
    write_blocks_from(&mut c, "p2", 5, 1);
    let t = (ref0 + 500).to_string();
    assert_eq!(blocks(&extract(&mut c, "p2", &t, &t)), vec![5]);
}

#[test]
fn shutdown_command_sends_no_reply_and_ends_the_server() {
    let mut srv = AnyServer::start();
    let mut c = connect(&srv);
    assert_eq!(cmd(&mut c, "PING"), PONG);
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
    srv.shutdown(); // reaps it
    srv.start_again();
    assert_eq!(cmd(&mut connect(&srv), "PING"), PONG);
}

#[test]
fn lru_eviction_persists_size_and_ref() {
    // Metadata of 2 streams is cached; loading a third evicts (and persists) the least
    // recently used one.
    let mut srv = AnyServer::start_with(|c| c.cache_entries = 2);
    let (ref_a, ref_b);
    {
        let mut c = connect(&srv);
        create_open(&mut c, "a", 8000, 1, 16);
        write_blocks(&mut c, "a", 3);
        ref_a = info(&mut c, "a", "ref").unwrap();
        create_open(&mut c, "b", 8000, 1, 16); // cache: b, a
        write_blocks(&mut c, "b", 2);
        ref_b = info(&mut c, "b", "ref").unwrap();
        // CREATE loads `c` into the cache: `a` is evicted and persisted (size 4800).
        assert_eq!(cmd(&mut c, "CREATE 'c' 8000 1 16"), NULL);
        // Using `a` again evicts `b` (size 3200); `a` is cached again with newer values.
        write_blocks_from(&mut c, "a", 3, 1);
        assert_eq!(info(&mut c, "a", "size"), Some(6400));
    }
    srv.kill();
    srv.start_again();
    let mut c = connect(&srv);
    assert_eq!(info(&mut c, "a", "size"), Some(4800), "as evicted");
    assert_eq!(info(&mut c, "a", "ref"), Some(ref_a));
    assert_eq!(info(&mut c, "b", "size"), Some(3200), "as evicted");
    assert_eq!(info(&mut c, "b", "ref"), Some(ref_b));
    assert_eq!(info(&mut c, "c", "sample_rate"), Some(8000));
    // The blocks themselves were in memory: lost. `a` continues its old timeline from the
    // persisted size (4800 bytes = 300 ms): the next block is keyed where block 3 was.
    assert_eq!(all(&mut c, "a"), Vec::<i32>::new());
    assert_eq!(cmd(&mut c, "OPEN 'a'"), NULL);
    write_blocks_from(&mut c, "a", 7, 1);
    let t = (ref_a + 300).to_string();
    assert_eq!(blocks(&extract(&mut c, "a", &t, &t)), vec![7]);
}

#[test]
fn search_loads_every_stream_and_may_evict() {
    // SEARCH looks every stream up through the cache, in file-name order (decimal hashes
    // sorted as strings), so with a cache of 2 a SEARCH over 3 streams evicts, and so
    // persists, metadata.
    let mut srv = AnyServer::start_with(|c| c.cache_entries = 2);
    let ids = ["s1", "s2", "s3"];
    {
        let mut c = connect(&srv);
        for id in ids {
            create_open(&mut c, id, 8000, 1, 16);
            write_blocks(&mut c, id, 1);
        }
        assert_eq!(cmd(&mut c, "SEARCH 'x*'"), r#"["list"]"#);
    }
    srv.kill();
    srv.start_again();
    // The same LRU, replayed: CREATE and the frame use each stream in turn, then SEARCH uses
    // all three in file-name order. Every eviction came after the evicted stream's frame.
    let mut order: Vec<&str> = ids.to_vec();
    order.sort_by_key(|id| racs_lite::stream_hash(id.as_bytes()).to_string());
    let uses = ids.iter().flat_map(|id| [*id, *id]).chain(order);
    let mut lru: Vec<&str> = Vec::new(); // most recent last
    let mut evicted = std::collections::BTreeSet::new();
    for id in uses {
        if let Some(i) = lru.iter().position(|x| *x == id) {
            lru.remove(i);
        } else if lru.len() == 2 {
            evicted.insert(lru.remove(0));
        }
        lru.push(id);
    }
    let mut c = connect(&srv);
    for id in ids {
        let want = evicted.contains(id).then_some(1600);
        assert_eq!(
            info(&mut c, id, "size"),
            want,
            "{id} (evicted: {evicted:?})"
        );
    }
}

#[test]
fn durable_stop_keeps_everything_acknowledged() {
    let mut srv = AnyServer::start_with(|c| {
        c.entries = 4;
        c.durable = true;
    });
    if !srv.needs_lite("the durable option") {
        return;
    }
    let (ref0, size0);
    {
        let mut c = connect(&srv);
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
    let mut c = connect(&srv);
    assert_eq!(blocks(&all(&mut c, "keep")), (0..10).collect::<Vec<_>>());
    assert_eq!(info(&mut c, "keep", "ref"), Some(ref0));
    assert_eq!(info(&mut c, "keep", "size"), Some(size0));
    // Appends continue the old virtual timeline: the next block is keyed ref + 1000 ms.
    assert_eq!(cmd(&mut c, "OPEN 'keep'"), NULL);
    write_blocks_from(&mut c, "keep", 42, 1);
    let t = (ref0 + 1000).to_string();
    assert_eq!(blocks(&extract(&mut c, "keep", &t, &t)), vec![42]);
    // SHUTDOWN is durable too.
    drop(c);
    srv.shutdown();
    srv.start_again();
    let mut c = connect(&srv);
    assert_eq!(all(&mut c, "keep").len(), 11 * 800);
    // A kill still loses the in-memory table.
    assert_eq!(cmd(&mut c, "OPEN 'keep'"), NULL);
    write_blocks_from(&mut c, "keep", 43, 1);
    srv.kill();
    srv.start_again();
    let mut c = connect(&srv);
    assert_eq!(all(&mut c, "keep").len(), 11 * 800);
}

#[test]
fn a_table_being_written_is_lost_by_a_kill() {
    let mut srv = AnyServer::start_with(|c| {
        c.entries = 2;
        c.flush_invisible = Duration::from_secs(30);
    });
    if !srv.needs_lite("a write window long enough to kill inside it") {
        return;
    }
    {
        let mut c = connect(&srv);
        create_open(&mut c, "w", 8000, 1, 16);
        write_blocks(&mut c, "w", 3); // blocks 0-1 handed to the writer, 2 in memory
        assert_eq!(
            blocks(&all(&mut c, "w")),
            vec![2],
            "the table is being written"
        );
    }
    srv.kill();
    srv.start_again();
    assert_eq!(all(&mut connect(&srv), "w"), Vec::<i32>::new());
}

#[test]
fn stream_ids_never_become_file_names() {
    let mut srv = AnyServer::start_with(|c| {
        c.entries = 2;
        c.durable = true;
    });
    if !srv.needs_lite("racs-lite's file layout, with the durable option") {
        return;
    }
    let ids = ["../../escape", "/etc/passwd", "a/b", ".", "..", "", r"x\'y"];
    {
        let mut c = connect(&srv);
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
    let mut c = connect(&srv);
    for id in ids {
        assert_eq!(all(&mut c, id).len(), 3 * 800, "{id:?}");
    }
}

/// 400 one-sample frames (44.1 kHz mono: 44 per ms) in tables of 4: many tables share the
/// name (first key) of an earlier one.
fn tiny_frames(srv: &AnyServer) -> (Vec<i32>, i64) {
    let mut c = connect(srv);
    create_open(&mut c, "tiny", 44100, 1, 16);
    for k in 0..400i16 {
        assert_eq!(send_frame(&mut c, &[1; 16], "tiny", &pcm16(&[k])), NULL);
    }
    let r = info(&mut c, "tiny", "ref").unwrap();
    // Let every table write finish.
    std::thread::sleep(Duration::from_millis(1500));
    (all(&mut c, "tiny"), r)
}

#[test]
fn tables_with_the_same_name_overwrite_each_other() {
    let srv = AnyServer::start_with(|c| c.entries = 4);
    let (got, _) = tiny_frames(&srv);
    assert!(got.len() < 400, "colliding tables were overwritten");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(got.ends_with(&[396, 397, 398, 399]), "the in-memory table");
    if srv.is_real() {
        return;
    }
    // Table k (blocks 4k..4k+3) is named ref + trunc(4k / 44.1) ms; of the tables sharing a
    // name, the last one written survives.
    let name = |k: usize| (4 * k * 2) as f64 / 88200.0 * 1000.0;
    let expect: Vec<i32> = (0..99)
        .filter(|&k| k == 98 || name(k) as i64 != name(k + 1) as i64)
        .flat_map(|k| (4 * k as i32)..(4 * k as i32 + 4))
        .chain(396..400)
        .collect();
    assert_eq!(got, expect);
}

#[test]
fn keep_colliding_tables_keeps_them_all() {
    let srv = AnyServer::start_with(|c| {
        c.entries = 4;
        c.keep_colliding_tables = true;
    });
    if !srv.needs_lite("the keep_colliding_tables option") {
        return;
    }
    let (got, _) = tiny_frames(&srv);
    assert_eq!(got, (0..400).collect::<Vec<i32>>());
}

#[test]
fn restart_rebinds_the_same_port_with_clients_connected() {
    let mut srv = AnyServer::start();
    let port = srv.port();
    let mut clients: Vec<RawClient> = (0..5).map(|_| connect(&srv)).collect();
    for c in &mut clients {
        assert_eq!(cmd(c, "PING"), PONG);
    }
    srv.kill();
    assert!(closed_by_server(&mut clients[0]), "kill closes connections");
    srv.restart();
    assert_eq!(srv.port(), port);
    assert_eq!(srv.host(), "127.0.0.1");
    assert_eq!(cmd(&mut connect(&srv), "PING"), PONG);
}

#[test]
fn server_works_inside_another_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut srv = AnyServer::start();
        assert_eq!(cmd(&mut connect(&srv), "PING"), PONG);
        srv.restart();
        assert_eq!(cmd(&mut connect(&srv), "PING"), PONG);
        drop(srv);
    });
}
