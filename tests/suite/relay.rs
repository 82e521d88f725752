//! The relay (issue 30) against the sandbox's real servers, as managed databases are (the default
//! sandbox): the legacy server cannot reach the target; `cutover relay` streams a slot of the
//! target and applies it on the legacy database, exactly once across a SIGKILL and across
//! connections reset and stalled by a TCP proxy; a 1 MB TOASTed value that an UPDATE of another
//! column leaves alone arrives intact; REPLICA IDENTITY FULL, TRUNCATE and a large transaction
//! arrive as they were; an ALTER TABLE on the publisher stops the relay naming the table; a
//! stalled relay with a small WAL budget warns, then stops and drops its slot.
//!
//! "Exactly once" is checked independently of the relay: both sides' rows are compared by an MD5
//! of their text in key order (a row applied twice, or one skipped, changes it), and the tables
//! without a key would show a duplicate as an extra row.

use crate::common::{cutover_bin, wait_until, Sandbox};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP proxy on loopback in front of one server: it can reset every connection through it, and
/// stall (forward nothing, accept nothing) for a while, as a network that drops packets does.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stalled: Arc<AtomicBool> = Arc::default();
        let (c, st) = (conns.clone(), stalled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                while st.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            while st.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    while st.load(Ordering::SeqCst) {
                                        std::thread::sleep(Duration::from_millis(20));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            conns,
            stalled,
        }
    }

    /// Resets every connection through the proxy.
    fn reset(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Forwards nothing for `d`.
    fn stall(&self, d: Duration) {
        self.stalled.store(true, Ordering::SeqCst);
        std::thread::sleep(d);
        self.stalled.store(false, Ordering::SeqCst);
    }
}

/// `url` with its port replaced by `port`.
fn through(url: &str, port: u16) -> String {
    let (head, rest) = url.split_once("@127.0.0.1:").unwrap();
    let (_, tail) = rest.split_once('/').unwrap();
    format!("{head}@127.0.0.1:{port}/{tail}")
}

fn port_of(url: &str) -> u16 {
    let rest = url.split_once("@127.0.0.1:").unwrap().1;
    rest.split_once('/').unwrap().0.parse().unwrap()
}

/// Starts `cutover relay` for slot/publication `rs` from the target (`publisher`) to the legacy
/// database (`destination`), its output in `log`.
fn relay(publisher: &str, destination: &str, log: &std::path::Path, extra: &[&str]) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(cutover_bin())
        .args([
            "relay",
            "--slot",
            "rs",
            "--publication",
            "rp",
            "--publisher",
            "target",
            "--guard-interval",
            "1",
        ])
        .args(extra)
        .env_clear()
        .env("CUTOVER_RELAY_PUBLISHER_URL", publisher)
        .env("CUTOVER_RELAY_DESTINATION_URL", destination)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// Waits until the WAL guard dropped `slot` on the publisher `target` (then releases `lock` on
/// `legacy`, which stalled the relay), recorded `stopped` on `legacy`, and said so in `log`
/// after its warning; returns the log.
fn stopped_by_guard(
    sb: &Sandbox,
    target: &str,
    legacy: &str,
    slot: &str,
    log: &std::path::Path,
    lock: Option<Child>,
) -> String {
    wait_until(90, &format!("the WAL guard to drop slot {slot}"), || {
        sb.sql(
            target,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        )[0][0]
            .as_deref()
            == Some("0")
    });
    if let Some(lock) = lock {
        release_lock(sb, legacy, lock);
    }
    wait_until(30, "the stop to be recorded", || {
        sb.try_sql(
            legacy,
            &format!("SELECT state FROM cutover_relay.progress WHERE slot = '{slot}'"),
        )
        .ok()
        .and_then(|r| r.first().and_then(|r| r[0].clone()))
        .as_deref()
            == Some("stopped")
    });
    wait_until(30, "the guard to say why it stopped", || {
        std::fs::read_to_string(log)
            .unwrap()
            .contains("stopped by the WAL retention guard")
    });
    let said = std::fs::read_to_string(log).unwrap();
    let warned = said.find("WARNING: the slot retains").expect(&said);
    let stopped = said
        .find("stopped by the WAL retention guard")
        .expect(&said);
    assert!(warned < stopped, "{said}");
    said
}

const TABLES: &str = "CREATE TABLE rel_items (id int PRIMARY KEY, note text, doc text, n numeric, at timestamptz, tags text[], j jsonb);
CREATE TABLE rel_full (a int, b jsonb, c text);
ALTER TABLE rel_full REPLICA IDENTITY FULL;
CREATE TABLE rel_gone (id int PRIMARY KEY);";

/// Holds `LOCK TABLE rel_items IN ACCESS EXCLUSIVE MODE` on `url` (through psql) until the
/// returned child is killed: the relay's apply waits on it, mid-stream.
fn hold_lock(sb: &Sandbox, url: &str) -> Child {
    let child = Command::new("psql")
        .arg(url)
        .args([
            "-Atq",
            "-c",
            "BEGIN; LOCK TABLE rel_items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600); COMMIT",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(30, "the lock to be held", || {
        sb.sql(url, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'rel_items' AND l.mode = 'AccessExclusiveLock' AND l.granted")[0][0].as_deref() == Some("1")
    });
    child
}

/// Ends the session [`hold_lock`] opened (its backend sleeps on and would hold the lock after
/// its client went away), then the client.
fn release_lock(sb: &Sandbox, url: &str, mut child: Child) {
    sb.sql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK TABLE rel_items%' AND pid <> pg_backend_pid()");
    let _ = child.kill();
    let _ = child.wait();
}

/// True while the relay has received changes it has not confirmed: it is mid-stream.
fn in_flight(sb: &Sandbox, target: &str) -> bool {
    sb.sql(target, "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'rs' AND r.sent_lsn > s.confirmed_flush_lsn")[0][0].as_deref() == Some("1")
}

/// An MD5 of each relayed table's rows in order, and the row counts.
fn fingerprint(sb: &Sandbox, url: &str) -> Vec<Vec<Option<String>>> {
    sb.sql(
        url,
        "SELECT (SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY id)), '') FROM rel_items t),
                (SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM rel_full t),
                (SELECT count(*) FROM rel_gone)::text",
    )
}

fn applied_lsn(sb: &Sandbox, url: &str) -> Option<String> {
    sb.try_sql(
        url,
        "SELECT lsn::text FROM cutover_relay.progress WHERE slot = 'rs'",
    )
    .ok()
    .and_then(|r| r.first().and_then(|r| r[0].clone()))
}

/// Waits until the relay applied everything the target wrote (its progress LSN at or past the
/// target's current LSN, measured once now).
fn wait_caught_up(sb: &Sandbox, target: &str, legacy: &str, secs: u64) {
    let goal = sb.sql(target, "SELECT pg_current_wal_lsn()::text")[0][0]
        .clone()
        .unwrap();
    wait_until(secs, &format!("the relay to apply up to {goal}"), || {
        applied_lsn(sb, legacy).is_some_and(|lsn| {
            sb.sql(
                target,
                &format!("SELECT '{lsn}'::pg_lsn >= '{goal}'::pg_lsn OR (SELECT confirmed_flush_lsn >= '{goal}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'rs')"),
            )[0][0]
                .as_deref()
                == Some("t")
        })
    });
}

#[test]
fn the_relay_applies_every_change_exactly_once_through_sigkill_resets_and_stalls_and_stops_on_ddl_and_wal_budget(
) {
    let sb = Sandbox::start();
    // Letters' dev database: nothing else of the suite writes it.
    let target = sb.var("CUTOVER_DEV_LETTERS_TARGET_DATABASE_URL");
    let legacy = sb.var("CUTOVER_DEV_LETTERS_SOURCE_DATABASE_URL");
    let log = sb.project.path().join("relay.log");

    // The route: the legacy server cannot reach the target (a private RDS); the tool can.
    let superuser = sb
        .var("CUTOVER_SANDBOX_SOURCE_SUPERUSER_URL")
        .replace("/postgres?", "/letters_dev?");
    // The target's admin with its password: the route is refused after the login, as a
    // connection that never arrives would fail it.
    let (user, password) = target
        .strip_prefix("postgres://")
        .and_then(|t| t.split_once('@'))
        .and_then(|(cred, _)| cred.split_once(':'))
        .unwrap();
    let trial = sb
        .try_sql(
            &superuser,
            &format!(
                "BEGIN; CREATE SUBSCRIPTION route_trial CONNECTION 'host=127.0.0.1 port={} dbname=letters_dev user={user} password={password} sslmode=require connect_timeout=5' PUBLICATION p WITH (connect = true, enabled = false, create_slot = false, slot_name = NONE); ROLLBACK",
                port_of(&target)
            ),
        )
        .err()
        .expect("the legacy server reached the target");
    assert!(trial.contains("no route from legacy-host"), "{trial}");
    assert_eq!(sb.sql(&target, "SELECT 1")[0][0].as_deref(), Some("1"));

    for url in [&target, &legacy] {
        sb.sql(url, TABLES);
    }
    sb.sql(
        &target,
        "CREATE PUBLICATION rp FOR TABLE rel_items, rel_full, rel_gone",
    );
    sb.sql(
        &target,
        "SELECT pg_create_logical_replication_slot('rs', 'pgoutput')",
    );
    // Every type the copy supports, a 1 MB TOASTed value, a key-less table, a TRUNCATE.
    sb.sql(
        &target,
        "INSERT INTO rel_items SELECT g, 'n' || g, NULL, g * 1.5, '2026-01-01'::timestamptz + g * interval '1 minute', ARRAY['a', g::text], jsonb_build_object('g', g) FROM generate_series(1, 2000) g;
         INSERT INTO rel_items VALUES (9000, 'big', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 32768) i), 1, now(), NULL, NULL);
         INSERT INTO rel_full VALUES (1, '{\"x\": 1}', 'dup'), (1, '{\"x\": 1}', 'dup'), (2, NULL, 'z');
         INSERT INTO rel_gone SELECT generate_series(1, 100);",
    );
    let publisher_proxy = Proxy::start(port_of(&target));
    let destination_proxy = Proxy::start(port_of(&legacy));
    let publisher = through(&target, publisher_proxy.port);
    let destination = through(&legacy, destination_proxy.port);
    let mut r = relay(&publisher, &destination, &log, &[]);
    wait_caught_up(&sb, &target, &legacy, 60);

    // A large transaction, held mid-stream (its apply waits on a lock) and killed with SIGKILL;
    // the relay started again.
    let lock = hold_lock(&sb, &legacy);
    sb.sql(
        &target,
        "UPDATE rel_items SET note = 'toast kept' WHERE id = 9000;
         INSERT INTO rel_items SELECT g, repeat('x', 200), NULL, g, now(), NULL, NULL FROM generate_series(10001, 90000) g;",
    );
    wait_until(60, "the relay to hold changes it has not applied", || {
        in_flight(&sb, &target)
    });
    r.kill().unwrap();
    r.wait().unwrap();
    release_lock(&sb, &legacy, lock);
    sb.sql(
        &target,
        "UPDATE rel_full SET b = '{\"y\": 2}' WHERE ctid = (SELECT min(ctid) FROM rel_full WHERE a = 1);
         DELETE FROM rel_full WHERE a = 2;
         UPDATE rel_items SET id = id + 100000 WHERE id <= 10;
         DELETE FROM rel_items WHERE id BETWEEN 500 AND 599;
         TRUNCATE rel_gone;",
    );
    let mut r = relay(&publisher, &destination, &log, &[]);
    wait_caught_up(&sb, &target, &legacy, 120);
    assert_eq!(fingerprint(&sb, &target), fingerprint(&sb, &legacy));

    // Connections reset, then stalled for 5 s, on each side: the relay reconnects and resumes.
    for proxy in [&publisher_proxy, &destination_proxy] {
        sb.sql(&target, "UPDATE rel_items SET n = n + 1 WHERE id % 10 = 0");
        proxy.reset();
        sb.sql(&target, "UPDATE rel_items SET n = n + 1 WHERE id % 10 = 1");
        proxy.stall(Duration::from_secs(5));
        sb.sql(
            &target,
            "INSERT INTO rel_full VALUES (3, NULL, 'after the stall')",
        );
        wait_caught_up(&sb, &target, &legacy, 120);
    }
    assert_eq!(fingerprint(&sb, &target), fingerprint(&sb, &legacy));
    // The TOASTed value, unchanged by the UPDATE of another column, arrived intact.
    assert_eq!(
        sb.sql(&legacy, "SELECT note, length(doc), md5(doc) = (SELECT md5(string_agg(md5(i::text), '')) FROM generate_series(1, 32768) i) FROM rel_items WHERE id = 9000"),
        vec![vec![Some("toast kept".into()), Some("1048576".into()), Some("t".into())]]
    );

    // DDL on the publisher: the relay stops, naming the table, and records why.
    sb.sql(&target, "ALTER TABLE rel_items ADD COLUMN added int; INSERT INTO rel_items (id, added) VALUES (200000, 1)");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = r.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the relay did not stop on the ALTER TABLE"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("table public.rel_items changed on the publisher during replication"),
        "{said}"
    );
    assert_eq!(
        sb.sql(&legacy, "SELECT state, message LIKE '%public.rel_items%' FROM cutover_relay.progress WHERE slot = 'rs'"),
        vec![vec![Some("failed".into()), Some("t".into())]]
    );
    assert_eq!(
        sb.sql(&legacy, "SELECT count(*) FROM rel_items WHERE id = 200000")[0][0].as_deref(),
        Some("0"),
        "nothing of the new shape was applied"
    );

    // The same change on the destination: the relay goes on. Then it stalls (the destination's
    // table locked) while the target writes past a small WAL budget: a warning, then the relay
    // stops and drops its slot before the target's disk would fill.
    sb.sql(&legacy, "ALTER TABLE rel_items ADD COLUMN added int");
    let mut r = relay(
        &publisher,
        &destination,
        &log,
        &["--wal-budget", "48MB", "--wal-limit", "96MB"],
    );
    wait_caught_up(&sb, &target, &legacy, 60);
    let lock = hold_lock(&sb, &legacy);
    sb.sql(&target, "INSERT INTO rel_items (id) VALUES (300000)");
    wait_until(60, "the relay to stall on the lock", || {
        in_flight(&sb, &target)
    });
    // WAL the slot must keep: segments switched after a write each (pg_switch_wal is the
    // superuser's, as on a managed server it is the provider's).
    let target_superuser = sb.var("CUTOVER_SANDBOX_TARGET_SUPERUSER_URL");
    for i in 0..8 {
        sb.sql(
            &target,
            &format!("INSERT INTO rel_gone VALUES ({})", 1000 + i),
        );
        sb.sql(&target_superuser, "SELECT pg_switch_wal()");
    }
    let said = stopped_by_guard(&sb, &target, &legacy, "rs", &log, Some(lock));
    assert!(
        said.contains("past the limit of 100663296") && said.contains("the slot was dropped"),
        "{said}"
    );
    let _ = r.kill();
    let _ = r.wait();

    // A slot a native subscription would consume gets a guard alone (`--guard-only`): nothing
    // consumes this one, so past the budget it warns, past the limit it drops the slot and
    // records why on the subscriber, where the tool's waits read it.
    sb.sql(
        &target,
        "SELECT pg_create_logical_replication_slot('gs', 'pgoutput')",
    );
    let guard_log = sb.project.path().join("guard.log");
    let out = std::fs::File::create(&guard_log).unwrap();
    let mut guard = Command::new(cutover_bin())
        .args([
            "relay",
            "--slot",
            "gs",
            "--publication",
            "rp",
            "--publisher",
            "target",
            "--guard-interval",
            "1",
            "--guard-only",
            "--wal-budget",
            "16MB",
            "--wal-limit",
            "48MB",
        ])
        .env_clear()
        .env("CUTOVER_RELAY_PUBLISHER_URL", &publisher)
        .env("CUTOVER_RELAY_DESTINATION_URL", &destination)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    for i in 0..6 {
        sb.sql(
            &target,
            &format!("INSERT INTO rel_gone VALUES ({})", 2000 + i),
        );
        sb.sql(&target_superuser, "SELECT pg_switch_wal()");
    }
    let said = stopped_by_guard(&sb, &target, &legacy, "gs", &guard_log, None);
    assert!(said.contains("guarding slot gs"), "{said}");
    let _ = guard.kill();
    let _ = guard.wait();
    sb.assert_no_secrets(&[
        std::fs::read_to_string(&log).unwrap(),
        std::fs::read_to_string(&guard_log).unwrap(),
    ]);
}
