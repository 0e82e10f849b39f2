//! The sync response body: its cleanup (PEP 3333's `close()`) runs exactly once on every path,
//! after the producer's own `Drop`; streaming, writers, and the non-streamed shortcuts.

use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use amphi_core::{Error, ErrorKind, SyncBody};
use bytes::Bytes;

/// A shared log of what happened, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, what: impl Into<String>) {
        self.0.lock().unwrap().push(what.into());
    }

    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, what: &str) -> usize {
        self.events().iter().filter(|e| *e == what).count()
    }

    /// Adds a cleanup hook to `body` that logs "closed".
    fn close_hook(&self, body: SyncBody) -> SyncBody {
        let log = self.clone();
        body.on_close(move || log.push("closed"))
    }
}

/// An iterator of `n` chunks that logs each pull and its own drop, and panics at `panic_at`.
struct Producer {
    log: Log,
    next: usize,
    n: usize,
    panic_at: Option<usize>,
}

impl Producer {
    fn new(log: &Log, n: usize) -> Producer {
        Producer {
            log: log.clone(),
            next: 0,
            n,
            panic_at: None,
        }
    }
}

impl Iterator for Producer {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.next == self.n {
            return None;
        }
        if self.panic_at == Some(self.next) {
            panic!("producer failed at chunk {}", self.next);
        }
        self.log.push(format!("produced {}", self.next));
        self.next += 1;
        Some(Bytes::from(format!("chunk {};", self.next - 1)))
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.log.push("producer dropped");
    }
}

/// A sink that takes `ok` chunks, then fails like a connection whose client left.
fn failing_sink(ok: usize, got: &Log) -> impl FnMut(Bytes) -> io::Result<()> {
    let got = got.clone();
    let mut taken = 0;
    move |chunk| {
        if taken == ok {
            return Err(Error::new(ErrorKind::Disconnected).into_io());
        }
        taken += 1;
        got.push(String::from_utf8(chunk.to_vec()).unwrap());
        Ok(())
    }
}

fn collect_sink(out: &mut Vec<u8>) -> impl FnMut(Bytes) -> io::Result<()> + '_ {
    move |chunk| {
        out.extend_from_slice(&chunk);
        Ok(())
    }
}

#[test]
fn cleanup_runs_once_after_a_full_write() {
    let log = Log::default();
    let body = log.close_hook(SyncBody::chunks(Producer::new(&log, 3)));
    let mut out = Vec::new();
    body.write_to(&mut collect_sink(&mut out)).unwrap();
    assert_eq!(out, b"chunk 0;chunk 1;chunk 2;");
    assert_eq!(
        log.events(),
        [
            "produced 0",
            "produced 1",
            "produced 2",
            "producer dropped",
            "closed"
        ]
    );
}

#[test]
fn cleanup_runs_once_for_every_non_streamed_body_on_every_path() {
    let bodies: Vec<fn() -> SyncBody> = vec![
        SyncBody::empty,
        || SyncBody::full("some bytes"),
        || SyncBody::full(""),
        || SyncBody::from(String::from("a string")),
        || SyncBody::from(vec![1u8, 2, 3]),
        || SyncBody::from(Bytes::from("bytes")),
        SyncBody::default,
    ];
    for make in bodies {
        // Written.
        let log = Log::default();
        log.close_hook(make()).write_to(&mut |_| Ok(())).unwrap();
        assert_eq!(log.count("closed"), 1);
        // Written to a sink that fails.
        let log = Log::default();
        let _ = log
            .close_hook(make())
            .write_to(&mut failing_sink(0, &Log::default()));
        assert_eq!(log.count("closed"), 1);
        // Dropped unwritten.
        let log = Log::default();
        drop(log.close_hook(make()));
        assert_eq!(log.count("closed"), 1);
        // Taken as bytes.
        let log = Log::default();
        assert!(log.close_hook(make()).try_into_bytes().is_ok());
        assert_eq!(log.count("closed"), 1);
        // Collected.
        let log = Log::default();
        log.close_hook(make()).collect().unwrap();
        assert_eq!(log.count("closed"), 1);
    }
}

#[test]
fn a_sink_failing_mid_way_stops_the_producer_and_runs_cleanup_once() {
    let log = Log::default();
    let got = Log::default();
    let body = log.close_hook(SyncBody::chunks(Producer::new(&log, 10)));
    let err = body.write_to(&mut failing_sink(2, &got)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(
        Error::from_io(&err).unwrap().is_disconnected(),
        "the sink's error is returned as it was"
    );
    assert_eq!(got.events(), ["chunk 0;", "chunk 1;"]);
    assert_eq!(
        log.events(),
        [
            "produced 0",
            "produced 1",
            "produced 2", // the chunk the sink refused
            "producer dropped",
            "closed"
        ],
        "nothing is produced after the failure, and cleanup follows the producer's drop"
    );
}

#[test]
fn a_panicking_producer_still_runs_cleanup_once() {
    let log = Log::default();
    let mut producer = Producer::new(&log, 10);
    producer.panic_at = Some(2);
    let body = log.close_hook(SyncBody::chunks(producer));
    let mut out = Vec::new();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        body.write_to(&mut collect_sink(&mut out))
    }));
    let payload = result.unwrap_err();
    assert_eq!(
        Error::from_panic(&*payload).message(),
        Some("producer failed at chunk 2")
    );
    assert_eq!(out, b"chunk 0;chunk 1;");
    assert_eq!(
        log.events(),
        ["produced 0", "produced 1", "producer dropped", "closed"]
    );
}

#[test]
fn a_panicking_sink_still_runs_cleanup_once() {
    let log = Log::default();
    let body = log.close_hook(SyncBody::chunks(Producer::new(&log, 5)));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        body.write_to(&mut |_| panic!("the connection code panicked"))
    }));
    assert!(result.is_err());
    assert_eq!(log.events(), ["produced 0", "producer dropped", "closed"]);
}

#[test]
fn a_body_dropped_unwritten_drops_its_producer_then_cleans_up() {
    let log = Log::default();
    let body = log.close_hook(SyncBody::chunks(Producer::new(&log, 3)));
    assert!(body.is_streamed());
    drop(body);
    assert_eq!(log.events(), ["producer dropped", "closed"]);
}

#[test]
fn a_body_dropped_on_another_thread_cleans_up_there_once() {
    let log = Log::default();
    let body = log.close_hook(SyncBody::chunks(Producer::new(&log, 3)));
    thread::spawn(move || drop(body)).join().unwrap();
    assert_eq!(log.events(), ["producer dropped", "closed"]);
}

#[test]
fn a_failing_producer_ends_the_body_with_its_error() {
    let log = Log::default();
    let items = vec![
        Ok(Bytes::from("a")),
        Ok(Bytes::new()),
        Err(io::Error::other("database went away")),
        Ok(Bytes::from("never sent")),
    ];
    let body = log.close_hook(SyncBody::try_chunks(items));
    let mut sent = Vec::new();
    let err = body
        .write_to(&mut |c| {
            sent.push(c);
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "database went away");
    assert_eq!(
        sent,
        [Bytes::from("a")],
        "empty chunks are not handed to the sink"
    );
    assert_eq!(log.count("closed"), 1);
}

#[test]
fn empty_chunks_are_skipped() {
    let body = SyncBody::chunks(vec!["", "a", "", "b", ""]);
    let mut calls = Vec::new();
    body.write_to(&mut |c| {
        calls.push(c);
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, [Bytes::from("a"), Bytes::from("b")]);
    let mut calls = 0;
    SyncBody::full("")
        .write_to(&mut |_| {
            calls += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(calls, 0, "an empty full body sends nothing");
}

#[test]
fn two_cleanup_hooks_run_in_order_once_each() {
    let log = Log::default();
    let (a, b) = (log.clone(), log.clone());
    let body = SyncBody::chunks(vec!["x"])
        .on_close(move || a.push("first"))
        .on_close(move || b.push("second"));
    body.collect().unwrap();
    assert_eq!(log.events(), ["first", "second"]);
}

// ---- writer bodies (WSGI's write()) ----

/// Logs its drop: captured by a writer function, it shows when the function's state goes.
struct DropMark(Log, &'static str);

impl Drop for DropMark {
    fn drop(&mut self) {
        self.0.push(self.1);
    }
}

#[test]
fn a_writer_body_streams_each_write_as_a_chunk() {
    let log = Log::default();
    let mark = DropMark(log.clone(), "writer state dropped");
    let body = log.close_hook(SyncBody::writer(move |w| {
        let _mark = mark;
        w.write_all(b"hello ")?;
        assert_eq!(w.written(), 6);
        w.send(Bytes::from_static(b"world"))?;
        w.write_all(b"")?; // an empty write sends nothing
        w.write_all(b"!")?;
        w.flush()?;
        assert_eq!(w.written(), 12);
        Ok(())
    }));
    assert!(body.is_streamed());
    assert_eq!(body.exact_len(), None);
    let mut chunks = Vec::new();
    body.write_to(&mut |c| {
        chunks.push(c);
        Ok(())
    })
    .unwrap();
    assert_eq!(chunks, ["hello ", "world", "!"]);
    assert_eq!(log.events(), ["writer state dropped", "closed"]);
}

#[test]
fn a_writer_sees_the_sink_failure_and_cleanup_runs_once() {
    let log = Log::default();
    let got = Log::default();
    let seen = Arc::new(Mutex::new(None));
    let seen_in_writer = seen.clone();
    let mark = DropMark(log.clone(), "writer state dropped");
    let body = log.close_hook(SyncBody::writer(move |w| {
        let _mark = mark;
        for i in 0..10 {
            if let Err(e) = w.write_all(format!("line {i}\n").as_bytes()) {
                *seen_in_writer.lock().unwrap() = Some((i, e.kind()));
                return Err(e);
            }
        }
        Ok(())
    }));
    let err = body.write_to(&mut failing_sink(3, &got)).unwrap_err();
    assert!(Error::from_io(&err).unwrap().is_disconnected());
    assert_eq!(
        *seen.lock().unwrap(),
        Some((3, io::ErrorKind::ConnectionAborted)),
        "the fourth write failed with the client-gone kind"
    );
    assert_eq!(got.events().len(), 3);
    assert_eq!(log.events(), ["writer state dropped", "closed"]);
}

#[test]
fn a_writer_that_ignores_a_failed_write_still_fails_the_body() {
    // A careless WSGI app swallows write errors and returns Ok; the body must not be taken
    // for complete, and the dead sink must not be called again.
    let got = Log::default();
    let sink_calls = Arc::new(Mutex::new(0));
    let calls = sink_calls.clone();
    let mut inner = failing_sink(1, &got);
    let mut sink = move |c: Bytes| {
        *calls.lock().unwrap() += 1;
        inner(c)
    };
    let body = SyncBody::writer(|w| {
        for i in 0..5 {
            let _ = w.write_all(format!("{i}").as_bytes());
        }
        Ok(())
    });
    let err = body.write_to(&mut sink).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(Error::from_io(&err).unwrap().is_disconnected());
    assert_eq!(got.events(), ["0"]);
    assert_eq!(*sink_calls.lock().unwrap(), 2, "no call after the failure");
}

#[test]
fn a_panicking_writer_still_runs_cleanup_once() {
    let log = Log::default();
    let mark = DropMark(log.clone(), "writer state dropped");
    let body = log.close_hook(SyncBody::writer(move |w| {
        let _mark = mark;
        w.write_all(b"partial")?;
        panic!("template error");
    }));
    let mut out = Vec::new();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        body.write_to(&mut collect_sink(&mut out))
    }));
    assert!(result.is_err());
    assert_eq!(out, b"partial");
    assert_eq!(log.events(), ["writer state dropped", "closed"]);
}

#[test]
fn a_writer_body_dropped_unwritten_never_runs_the_writer() {
    let log = Log::default();
    let mark = DropMark(log.clone(), "writer state dropped");
    let ran = Log::default();
    let ran_in = ran.clone();
    let body = log.close_hook(SyncBody::writer(move |_| {
        let _mark = mark;
        ran_in.push("ran");
        Ok(())
    }));
    drop(body);
    assert!(ran.events().is_empty());
    assert_eq!(log.events(), ["writer state dropped", "closed"]);
}

#[test]
fn a_writer_body_streams_with_backpressure_across_threads() {
    // The sink is a rendezvous channel to a "connection" thread: each write blocks until the
    // reader takes it, so at most one chunk is in flight.
    let (tx, rx) = mpsc::sync_channel::<Bytes>(0);
    let reader = thread::spawn(move || rx.into_iter().collect::<Vec<_>>());
    let body = SyncBody::writer(|w| {
        for i in 0..20 {
            w.write_all(format!("{i}\n").as_bytes())?;
        }
        Ok(())
    });
    body.write_to(&mut |c| {
        tx.send(c)
            .map_err(|_| Error::new(ErrorKind::Disconnected).into_io())
    })
    .unwrap();
    drop(tx);
    let chunks = reader.join().unwrap();
    assert_eq!(chunks.len(), 20);
    assert_eq!(chunks[19], "19\n");
}

// ---- the non-streamed shortcuts ----

#[test]
fn exact_len_is_known_only_without_producing() {
    assert_eq!(SyncBody::empty().exact_len(), Some(0));
    assert_eq!(SyncBody::full("abc").exact_len(), Some(3));
    assert_eq!(SyncBody::from("").exact_len(), Some(0));
    assert_eq!(SyncBody::chunks(vec!["abc"]).exact_len(), None);
    assert_eq!(SyncBody::writer(|_| Ok(())).exact_len(), None);
    assert!(!SyncBody::full("abc").is_streamed());
    assert!(!SyncBody::empty().is_streamed());
    assert!(SyncBody::try_chunks(Vec::new()).is_streamed());
}

#[test]
fn try_into_bytes_gives_streamed_bodies_back_untouched() {
    assert_eq!(SyncBody::full("abc").try_into_bytes().unwrap(), "abc");
    assert_eq!(SyncBody::empty().try_into_bytes().unwrap(), "");

    let log = Log::default();
    let body = log.close_hook(SyncBody::chunks(Producer::new(&log, 2)));
    let body = body.try_into_bytes().unwrap_err();
    assert!(log.events().is_empty(), "not produced, not closed");
    assert!(body.is_streamed());
    assert_eq!(body.collect().unwrap(), "chunk 0;chunk 1;");
    assert_eq!(log.count("closed"), 1);
    assert_eq!(log.count("producer dropped"), 1);
}

#[test]
fn collect_joins_every_kind_and_returns_the_first_error() {
    assert_eq!(SyncBody::empty().collect().unwrap(), "");
    assert_eq!(SyncBody::full("x").collect().unwrap(), "x");
    assert_eq!(SyncBody::chunks(vec!["a", "b"]).collect().unwrap(), "ab");
    assert_eq!(
        SyncBody::writer(|w| w.write_all(b"w")).collect().unwrap(),
        "w"
    );
    let err = SyncBody::try_chunks(vec![
        Ok(Bytes::from("a")),
        Err(io::Error::new(io::ErrorKind::TimedOut, "upstream")),
    ])
    .collect()
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[test]
fn debug_names_the_kind() {
    assert!(format!("{:?}", SyncBody::full("abc")).contains("full"));
    assert!(format!("{:?}", SyncBody::chunks(vec!["a"])).contains("chunks"));
    assert!(format!("{:?}", SyncBody::writer(|_| Ok(()))).contains("writer"));
    assert!(format!("{:?}", SyncBody::empty()).contains("empty"));
}
