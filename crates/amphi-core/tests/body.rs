//! The blocking request body: `Read`, `BufRead` and `chunk()` over bodies fed in many
//! chunkings, Content-Length, early EOF, the limit, disconnects, sticky errors, accounting.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use amphi_core::{BlockingBody, Error, ErrorKind};
use bytes::Bytes;

const TEXT: &[u8] = b"the quick brown fox\njumps over\n\nthe lazy dog\nno newline at the end";

/// Every way this suite cuts a payload into chunks: whole, 1-byte, fixed sizes, uneven cuts,
/// and the same with empty chunks in between (a server may forward empty DATA frames).
fn chunkings(data: &[u8]) -> Vec<(String, Vec<Bytes>)> {
    let mut out = Vec::new();
    out.push(("whole".to_owned(), vec![Bytes::copy_from_slice(data)]));
    for size in [1, 2, 3, 7, 16, 64] {
        out.push((
            format!("{size}-byte"),
            data.chunks(size).map(Bytes::copy_from_slice).collect(),
        ));
    }
    // Uneven cuts from a fixed pseudo-random sequence: reproducible without a dependency.
    let mut seed = 0x2545_f491_u32;
    let mut uneven = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (seed >> 16) as usize % 9 + 1;
        let (head, tail) = rest.split_at(n.min(rest.len()));
        uneven.push(Bytes::copy_from_slice(head));
        rest = tail;
    }
    out.push(("uneven".to_owned(), uneven));
    let with_empties: Vec<(String, Vec<Bytes>)> = out
        .iter()
        .map(|(name, chunks)| {
            let mut c = vec![Bytes::new()];
            for chunk in chunks {
                c.push(chunk.clone());
                c.push(Bytes::new());
            }
            (format!("{name} with empty chunks"), c)
        })
        .collect();
    out.extend(with_empties);
    out
}

fn body_of(chunks: &[Bytes]) -> BlockingBody {
    BlockingBody::from_chunks(chunks.iter().cloned().map(Ok).collect::<Vec<_>>())
}

fn amphi_kind(err: &io::Error) -> ErrorKind {
    Error::from_io(err)
        .unwrap_or_else(|| panic!("io error {err:?} does not carry an amphi error"))
        .kind()
}

/// Reads with a fixed-size buffer until EOF, returning the bytes and the number of reads.
fn read_in_steps(body: &mut BlockingBody, step: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        assert!(n <= step);
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn read_to_end_gives_the_same_bytes_for_every_chunking() {
    for (name, chunks) in chunkings(TEXT) {
        let mut body = body_of(&chunks);
        let mut got = Vec::new();
        body.read_to_end(&mut got).unwrap();
        assert_eq!(got, TEXT, "chunking {name}");
        assert_eq!(body.bytes_read(), TEXT.len() as u64, "chunking {name}");
        // EOF is stable.
        assert_eq!(body.read(&mut [0u8; 8]).unwrap(), 0, "chunking {name}");
    }
}

#[test]
fn small_fixed_reads_cross_chunk_boundaries() {
    for (name, chunks) in chunkings(TEXT) {
        for step in [1, 3, 5, 100] {
            let mut body = body_of(&chunks);
            assert_eq!(
                read_in_steps(&mut body, step).unwrap(),
                TEXT,
                "chunking {name}, step {step}"
            );
        }
    }
}

#[test]
fn chunk_iterates_non_empty_chunks_as_they_arrived() {
    for (name, chunks) in chunkings(TEXT) {
        let mut body = body_of(&chunks);
        let mut seen = Vec::new();
        while let Some(c) = body.chunk().unwrap() {
            assert!(!c.is_empty(), "chunking {name}: empty chunk handed out");
            seen.push(c);
        }
        let expected: Vec<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        assert_eq!(seen, expected, "chunking {name}");
        assert_eq!(
            body.chunk().unwrap(),
            None,
            "chunking {name}: end is stable"
        );
    }
}

#[test]
fn chunk_after_a_partial_read_returns_the_unread_rest() {
    let mut body = body_of(&[Bytes::from("hello world"), Bytes::from("!")]);
    let mut head = [0u8; 6];
    body.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"hello ");
    assert_eq!(body.chunk().unwrap().unwrap(), "world");
    assert_eq!(body.chunk().unwrap().unwrap(), "!");
    assert_eq!(body.chunk().unwrap(), None);
}

#[test]
fn an_owned_body_iterates_its_chunks_then_ends() {
    let body = body_of(&[Bytes::from("a"), Bytes::new(), Bytes::from("bc")]);
    let chunks: Vec<Bytes> = body.into_iter().map(Result::unwrap).collect();
    assert_eq!(chunks, vec![Bytes::from("a"), Bytes::from("bc")]);

    let mut seen = Vec::new();
    for chunk in body_of(&[Bytes::from("x"), Bytes::from("y")]) {
        seen.push(chunk.unwrap());
    }
    assert_eq!(seen, vec![Bytes::from("x"), Bytes::from("y")]);

    // into_inner gives the body back with what was not iterated.
    let mut iter = body_of(&[Bytes::from("first"), Bytes::from("second")]).into_iter();
    assert_eq!(iter.next().unwrap().unwrap(), "first");
    assert_eq!(iter.into_inner().to_bytes().unwrap(), "second");
}

#[test]
fn the_chunk_iterator_yields_an_error_once_then_ends() {
    let body = BlockingBody::from_chunks(vec![Ok(Bytes::from("a")), Err(disconnect())]);
    let items: Vec<io::Result<Bytes>> = body.into_iter().collect();
    assert_eq!(
        items.len(),
        2,
        "an error ends the iteration instead of repeating"
    );
    assert_eq!(
        amphi_kind(items[1].as_ref().unwrap_err()),
        ErrorKind::Disconnected
    );
    // A body that already failed still reports its error once.
    let mut failed = BlockingBody::from_bytes("0123").with_limit(2);
    assert!(failed.chunk().is_err());
    let items: Vec<io::Result<Bytes>> = failed.into_iter().collect();
    assert_eq!(items.len(), 1);
    assert_eq!(
        amphi_kind(items[0].as_ref().unwrap_err()),
        ErrorKind::BodyTooLarge
    );
    // Skipping errors cannot spin.
    let body = BlockingBody::from_chunks(vec![Err(disconnect())]);
    assert_eq!(body.into_iter().filter_map(Result::ok).count(), 0);
}

#[test]
fn read_adapters_are_not_ambiguous() {
    // `take`, `bytes`, `chain` and `by_ref` are Read's alone: the body is not an Iterator.
    let mut body = body_of(&[Bytes::from("abc"), Bytes::from("def")]);
    let mut first = String::new();
    body.by_ref().take(4).read_to_string(&mut first).unwrap();
    assert_eq!(first, "abcd");
    let rest: Vec<u8> = body.bytes().map(Result::unwrap).collect();
    assert_eq!(rest, b"ef");
    let mut joined = String::new();
    BlockingBody::from_bytes("x")
        .chain(BlockingBody::from_bytes("y"))
        .read_to_string(&mut joined)
        .unwrap();
    assert_eq!(joined, "xy");
}

#[test]
fn read_line_over_chunk_boundaries() {
    let expected: Vec<&str> = vec![
        "the quick brown fox\n",
        "jumps over\n",
        "\n",
        "the lazy dog\n",
        "no newline at the end",
    ];
    for (name, chunks) in chunkings(TEXT) {
        let mut body = body_of(&chunks);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if body.read_line(&mut line).unwrap() == 0 {
                break;
            }
            lines.push(line);
        }
        assert_eq!(lines, expected, "chunking {name}");
        // BufRead::lines works too.
        let body = body_of(&chunks);
        let lines: Vec<String> = body.lines().map(Result::unwrap).collect();
        assert_eq!(lines.len(), 5, "chunking {name}");
        assert_eq!(lines[4], "no newline at the end");
    }
}

#[test]
fn fill_buf_and_consume_walk_the_body() {
    let mut body = body_of(&[Bytes::from("abc"), Bytes::from("de")]);
    assert_eq!(body.fill_buf().unwrap(), b"abc");
    body.consume(1);
    assert_eq!(body.fill_buf().unwrap(), b"bc");
    assert_eq!(body.bytes_read(), 1);
    body.consume(100); // more than buffered: clamps, never skips into the next chunk
    assert_eq!(body.fill_buf().unwrap(), b"de");
    body.consume(2);
    assert_eq!(body.fill_buf().unwrap(), b"");
    assert_eq!(body.bytes_read(), 5);
}

#[test]
fn to_bytes_joins_every_chunking_and_reads_the_rest_only() {
    for (name, chunks) in chunkings(TEXT) {
        let mut body = body_of(&chunks);
        assert_eq!(body.to_bytes().unwrap(), TEXT, "chunking {name}");
        assert_eq!(
            body.to_bytes().unwrap(),
            "",
            "chunking {name}: nothing left"
        );
    }
    let mut body = body_of(&[Bytes::from("abcdef")]);
    let mut two = [0u8; 2];
    body.read_exact(&mut two).unwrap();
    assert_eq!(body.to_bytes().unwrap(), "cdef");
}

#[test]
fn empty_bodies() {
    let mut empty = BlockingBody::empty();
    assert_eq!(empty.read(&mut [0u8; 4]).unwrap(), 0);
    assert_eq!(empty.chunk().unwrap(), None);
    assert_eq!(BlockingBody::default().to_bytes().unwrap(), "");
    let mut only_empties = body_of(&[Bytes::new(), Bytes::new()]);
    assert_eq!(only_empties.chunk().unwrap(), None);
    let mut zero_length = BlockingBody::from_bytes("").with_limit(0);
    assert_eq!(zero_length.to_bytes().unwrap(), "");
}

#[test]
fn conversions_declare_the_length() {
    let body = BlockingBody::from(Bytes::from("abc"));
    assert_eq!(body.content_length(), Some(3));
    assert_eq!(BlockingBody::from("hello").content_length(), Some(5));
    let mut body = BlockingBody::from(vec![1u8, 2, 3, 4]);
    assert_eq!(body.content_length(), Some(4));
    assert_eq!(body.to_bytes().unwrap(), &[1u8, 2, 3, 4][..]);
    assert_eq!(BlockingBody::empty().content_length(), None);
    assert_eq!(BlockingBody::empty().limit(), None);
    assert_eq!(BlockingBody::empty().with_limit(9).limit(), Some(9));
}

#[test]
fn a_zero_length_read_buffer_reads_nothing() {
    let mut body = body_of(&[Bytes::from("abc")]);
    assert_eq!(body.read(&mut []).unwrap(), 0);
    assert_eq!(body.to_bytes().unwrap(), "abc");
}

// ---- Content-Length ----

#[test]
fn content_length_reads_exactly_that_many_bytes() {
    for (name, chunks) in chunkings(TEXT) {
        let mut body = body_of(&chunks).with_content_length(TEXT.len() as u64);
        let mut got = Vec::new();
        body.read_to_end(&mut got).unwrap();
        assert_eq!(got, TEXT, "chunking {name}");
    }
}

#[test]
fn a_longer_source_is_cut_at_content_length() {
    for (name, chunks) in chunkings(TEXT) {
        for len in [0usize, 1, 10, 20, TEXT.len() - 1] {
            let mut body = body_of(&chunks).with_content_length(len as u64);
            let got = read_in_steps(&mut body, 4).unwrap();
            assert_eq!(got, &TEXT[..len], "chunking {name}, length {len}");
            assert_eq!(body.bytes_read(), len as u64);
            // Every way of reading sees the same cut.
            let mut body = body_of(&chunks).with_content_length(len as u64);
            assert_eq!(body.to_bytes().unwrap(), &TEXT[..len]);
            let mut body = body_of(&chunks).with_content_length(len as u64);
            let mut joined = Vec::new();
            while let Some(c) = body.chunk().unwrap() {
                joined.extend_from_slice(&c);
            }
            assert_eq!(joined, &TEXT[..len], "chunking {name}, length {len}");
        }
    }
}

#[test]
fn the_source_is_not_pulled_past_content_length() {
    // A source that counts how often it is asked: once the declared length has arrived the
    // reader must not block on the connection for more (it could wait forever).
    let pulls = Arc::new(AtomicUsize::new(0));
    let counter = pulls.clone();
    let source = (0..).map(move |i| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(Bytes::from(format!("{i}")))
    });
    let mut body = BlockingBody::from_chunks(source).with_content_length(3);
    assert_eq!(body.to_bytes().unwrap(), "012");
    assert_eq!(pulls.load(Ordering::SeqCst), 3);
    assert_eq!(body.chunk().unwrap(), None);
    assert_eq!(pulls.load(Ordering::SeqCst), 3);
}

#[test]
fn early_eof_is_an_incomplete_body_after_the_bytes_that_came() {
    for (name, chunks) in chunkings(TEXT) {
        let declared = TEXT.len() as u64 + 5;
        let mut body = body_of(&chunks).with_content_length(declared);
        let mut got = Vec::new();
        let err = body.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "chunking {name}");
        assert_eq!(amphi_kind(&err), ErrorKind::IncompleteBody);
        assert_eq!(
            got, TEXT,
            "chunking {name}: the bytes that came are handed out"
        );
        assert_eq!(body.bytes_read(), TEXT.len() as u64);
        assert!(
            err.to_string().contains(&format!("of {declared} bytes")),
            "message says how much was missing: {err}"
        );
    }
    let mut body = BlockingBody::empty().with_content_length(1);
    let err = body.chunk().unwrap_err();
    assert_eq!(amphi_kind(&err), ErrorKind::IncompleteBody);
    let mut body = body_of(&[Bytes::from("ab")]).with_content_length(3);
    let err = body.to_bytes().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn incomplete_body_through_read_exact_and_read_line() {
    let mut body = body_of(&[Bytes::from("ab")]).with_content_length(4);
    let mut four = [0u8; 4];
    let err = body.read_exact(&mut four).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    let mut body = body_of(&[Bytes::from("no newline")]).with_content_length(40);
    let err = body.read_line(&mut String::new()).unwrap_err();
    assert_eq!(amphi_kind(&err), ErrorKind::IncompleteBody);
}

// ---- the limit ----

#[test]
fn a_declared_content_length_over_the_limit_fails_the_first_read() {
    let pulls = Arc::new(AtomicUsize::new(0));
    let counter = pulls.clone();
    let source = std::iter::repeat_with(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(Bytes::from_static(b"x"))
    });
    let mut body = BlockingBody::from_chunks(source)
        .with_content_length(11)
        .with_limit(10);
    let err = body.read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let amphi = Error::from_io(&err).unwrap();
    assert!(amphi.is_body_too_large());
    assert!(amphi.to_string().contains("content-length 11"), "{amphi}");
    assert_eq!(
        pulls.load(Ordering::SeqCst),
        0,
        "nothing read from the client"
    );
    assert_eq!(body.bytes_read(), 0);
    // Whichever way the handler reads first, it fails.
    let mut body = BlockingBody::from_bytes("0123456789").with_limit(4);
    assert_eq!(
        amphi_kind(&body.chunk().unwrap_err()),
        ErrorKind::BodyTooLarge
    );
    let mut body = BlockingBody::from_bytes("0123456789").with_limit(4);
    assert_eq!(
        amphi_kind(&body.fill_buf().unwrap_err()),
        ErrorKind::BodyTooLarge
    );
}

#[test]
fn a_body_exactly_at_the_limit_is_fine() {
    for (name, chunks) in chunkings(TEXT) {
        let mut body = body_of(&chunks).with_limit(TEXT.len() as u64);
        assert_eq!(body.to_bytes().unwrap(), TEXT, "chunking {name}");
        let mut body = body_of(&chunks)
            .with_limit(TEXT.len() as u64)
            .with_content_length(TEXT.len() as u64);
        assert_eq!(body.to_bytes().unwrap(), TEXT, "chunking {name}");
    }
}

#[test]
fn a_chunked_body_crossing_the_limit_fails_without_handing_out_bytes_past_it() {
    for (name, chunks) in chunkings(TEXT) {
        for limit in [0u64, 1, 10, 33, TEXT.len() as u64 - 1] {
            // Every way of reading: bytes handed out stay within the limit, then the error.
            let mut body = body_of(&chunks).with_limit(limit);
            let mut got = Vec::new();
            let err = body.read_to_end(&mut got).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "chunking {name}");
            assert_eq!(amphi_kind(&err), ErrorKind::BodyTooLarge);
            assert!(got.len() as u64 <= limit, "chunking {name}, limit {limit}");
            assert_eq!(
                got,
                &TEXT[..got.len()],
                "the bytes handed out are the body's"
            );
            assert_eq!(body.bytes_read(), got.len() as u64);

            let mut body = body_of(&chunks).with_limit(limit);
            let mut handed_out = 0u64;
            let err = loop {
                match body.chunk() {
                    Ok(Some(c)) => handed_out += c.len() as u64,
                    Ok(None) => panic!("chunking {name}, limit {limit}: no error"),
                    Err(e) => break e,
                }
            };
            assert_eq!(amphi_kind(&err), ErrorKind::BodyTooLarge);
            assert!(handed_out <= limit, "chunking {name}, limit {limit}");

            let mut body = body_of(&chunks).with_limit(limit);
            let err = body.to_bytes().unwrap_err();
            assert_eq!(amphi_kind(&err), ErrorKind::BodyTooLarge);
        }
    }
}

#[test]
fn the_limit_applies_to_the_bytes_within_content_length_only() {
    // The source sends more than declared; the excess is cut before the limit is checked.
    let mut body = body_of(&[Bytes::from("0123456789")])
        .with_content_length(4)
        .with_limit(4);
    assert_eq!(body.to_bytes().unwrap(), "0123");
}

// ---- disconnects and other source errors ----

fn disconnect() -> Error {
    Error::new(ErrorKind::Disconnected).with_message("peer reset")
}

#[test]
fn a_disconnect_is_connection_aborted_and_maps_back() {
    let mut body = BlockingBody::from_chunks(vec![
        Ok(Bytes::from("hel")),
        Ok(Bytes::from("lo")),
        Err(disconnect()),
        Ok(Bytes::from("never seen")),
    ]);
    let mut got = Vec::new();
    let err = body.read_to_end(&mut got).unwrap_err();
    assert_eq!(got, b"hello");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    let amphi = Error::from_io(&err).unwrap();
    assert!(amphi.is_disconnected());
    assert_eq!(
        amphi.message(),
        Some("peer reset"),
        "the source's error is kept"
    );
    assert_eq!(body.bytes_read(), 5);
    // And the owned conversion recovers it too.
    assert!(Error::from(err).is_disconnected());
}

#[test]
fn a_disconnect_with_content_length_is_a_disconnect_not_an_early_eof() {
    let mut body = BlockingBody::from_chunks(vec![Ok(Bytes::from("ab")), Err(disconnect())])
        .with_content_length(10);
    let err = body.to_bytes().unwrap_err();
    assert_eq!(amphi_kind(&err), ErrorKind::Disconnected);
}

#[test]
fn a_disconnect_surfaces_through_every_reading_api() {
    let make = || BlockingBody::from_chunks(vec![Ok(Bytes::from("line\nrest")), Err(disconnect())]);
    let mut body = make();
    assert_eq!(body.chunk().unwrap().unwrap(), "line\nrest");
    assert_eq!(
        amphi_kind(&body.chunk().unwrap_err()),
        ErrorKind::Disconnected
    );

    let mut body = make();
    let mut line = String::new();
    body.read_line(&mut line).unwrap();
    assert_eq!(line, "line\n");
    let err = body.read_line(&mut String::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);

    let mut body = make();
    let err = body.to_bytes().unwrap_err();
    assert_eq!(amphi_kind(&err), ErrorKind::Disconnected);
    assert_eq!(
        body.bytes_read(),
        9,
        "the chunk before the error was handed out"
    );
}

#[test]
fn errors_are_sticky() {
    let pulls = Arc::new(AtomicUsize::new(0));
    let counter = pulls.clone();
    let mut n = 0;
    let source = std::iter::from_fn(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        n += 1;
        Some(if n == 2 {
            Err(disconnect())
        } else {
            Ok(Bytes::from("data"))
        })
    });
    let mut body = BlockingBody::from_chunks(source);
    assert_eq!(body.chunk().unwrap().unwrap(), "data");
    for _ in 0..3 {
        assert_eq!(
            amphi_kind(&body.read(&mut [0u8; 8]).unwrap_err()),
            ErrorKind::Disconnected
        );
        assert_eq!(
            amphi_kind(&body.chunk().unwrap_err()),
            ErrorKind::Disconnected
        );
        assert_eq!(
            amphi_kind(&body.fill_buf().unwrap_err()),
            ErrorKind::Disconnected
        );
    }
    assert_eq!(
        pulls.load(Ordering::SeqCst),
        2,
        "the source is not asked again"
    );

    let mut too_big = body_of(&[Bytes::from("abc"), Bytes::from("def")]).with_limit(4);
    assert_eq!(too_big.chunk().unwrap().unwrap(), "abc");
    assert_eq!(
        amphi_kind(&too_big.chunk().unwrap_err()),
        ErrorKind::BodyTooLarge
    );
    assert_eq!(
        amphi_kind(&too_big.chunk().unwrap_err()),
        ErrorKind::BodyTooLarge
    );
    let err = too_big.read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);

    let mut short = body_of(&[Bytes::from("ab")]).with_content_length(3);
    assert_eq!(short.chunk().unwrap().unwrap(), "ab");
    assert_eq!(
        amphi_kind(&short.chunk().unwrap_err()),
        ErrorKind::IncompleteBody
    );
    assert_eq!(
        short.read(&mut [0u8; 1]).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn a_cancelled_source_is_connection_aborted() {
    let mut body = BlockingBody::from_chunks(vec![Err(Error::new(ErrorKind::Cancelled))]);
    let err = body.read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(Error::from_io(&err).unwrap().is_cancelled());
}

// ---- accounting and streaming ----

#[test]
fn bytes_read_counts_what_was_handed_out_not_what_was_buffered() {
    let mut body = body_of(&[Bytes::from("0123456789"), Bytes::from("abcdef")]);
    assert_eq!(body.bytes_read(), 0);
    let mut three = [0u8; 3];
    body.read_exact(&mut three).unwrap();
    assert_eq!(body.bytes_read(), 3);
    let _ = body.fill_buf().unwrap();
    assert_eq!(body.bytes_read(), 3, "peeking is not reading");
    assert_eq!(body.chunk().unwrap().unwrap(), "3456789");
    assert_eq!(body.bytes_read(), 10);
    body.read_exact(&mut three).unwrap();
    assert_eq!(body.bytes_read(), 13);
    assert_eq!(body.to_bytes().unwrap(), "def");
    assert_eq!(body.bytes_read(), 16);
}

#[test]
fn the_body_streams_a_chunk_at_a_time_from_another_thread() {
    // The "connection" is a channel fed by another thread, one chunk per acknowledgement: the
    // reader must hand out each chunk before the next exists, i.e. it never buffers the body.
    let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Bytes, Error>>();
    let (ack_tx, ack_rx) = mpsc::channel::<Bytes>();
    let feeder = thread::spawn(move || {
        for i in 0..5 {
            chunk_tx
                .send(Ok(Bytes::from(format!("chunk {i};"))))
                .unwrap();
            let echoed = ack_rx.recv().unwrap();
            assert_eq!(echoed, format!("chunk {i};"));
        }
        // Dropping the sender ends the body.
    });
    let mut body = BlockingBody::from_chunks(chunk_rx);
    let mut n = 0;
    while let Some(c) = body.chunk().unwrap() {
        ack_tx.send(c).unwrap();
        n += 1;
    }
    assert_eq!(n, 5);
    feeder.join().unwrap();
}

#[test]
fn debug_shows_progress_not_content() {
    let mut body = BlockingBody::from_bytes("secret").with_limit(100);
    let mut two = [0u8; 2];
    body.read_exact(&mut two).unwrap();
    let dbg = format!("{body:?}");
    assert!(dbg.contains("bytes_read: 2"), "{dbg}");
    assert!(dbg.contains("limit: Some(100)"), "{dbg}");
    assert!(!dbg.contains("secret"), "{dbg}");
}
