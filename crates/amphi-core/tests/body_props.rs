//! Property tests: the blocking body reader gives the same bytes and the same errors however
//! the body is cut into chunks, and whichever way it is read.

use std::io::{BufRead, Read};

use amphi_core::{BlockingBody, Error, ErrorKind};
use bytes::Bytes;
use proptest::prelude::*;

/// Cuts `data` at the given points (sorted, clamped), adding an empty chunk before the
/// chunks whose index is in `empties`.
fn chunk(data: &[u8], mut cuts: Vec<usize>, empties: &[usize]) -> Vec<Result<Bytes, Error>> {
    cuts.retain(|&c| c <= data.len());
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in cuts.iter().chain(std::iter::once(&data.len())).enumerate() {
        if empties.contains(&i) {
            out.push(Ok(Bytes::new()));
        }
        if c >= start {
            out.push(Ok(Bytes::copy_from_slice(&data[start..c])));
            start = c;
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Way {
    ReadToEnd,
    SmallReads(usize),
    Chunks,
    BufRead,
    ToBytes,
}

fn way() -> impl Strategy<Value = Way> {
    prop_oneof![
        Just(Way::ReadToEnd),
        (1usize..17).prop_map(Way::SmallReads),
        Just(Way::Chunks),
        Just(Way::BufRead),
        Just(Way::ToBytes),
    ]
}

/// Reads the whole body the given way: the bytes handed out before the end or an error, and
/// the error's kind.
fn read_all(body: &mut BlockingBody, way: Way) -> (Vec<u8>, Option<ErrorKind>) {
    let mut got = Vec::new();
    let kind = |e: std::io::Error| Error::from_io(&e).map(|e| e.kind());
    let err = match way {
        Way::ReadToEnd => body.read_to_end(&mut got).err().map(kind),
        Way::SmallReads(n) => {
            let mut buf = vec![0; n];
            loop {
                match body.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) => break Some(kind(e)),
                }
            }
        }
        Way::Chunks => loop {
            match body.chunk() {
                Ok(None) => break None,
                Ok(Some(c)) => {
                    assert!(!c.is_empty(), "chunk() never yields an empty chunk");
                    got.extend_from_slice(&c)
                }
                Err(e) => break Some(kind(e)),
            }
        },
        Way::BufRead => loop {
            match body.fill_buf() {
                Ok([]) => break None,
                Ok(b) => {
                    let n = b.len().min(3);
                    got.extend_from_slice(&b[..n]);
                    body.consume(n);
                }
                Err(e) => break Some(kind(e)),
            }
        },
        Way::ToBytes => match body.to_bytes() {
            Ok(b) => {
                got.extend_from_slice(&b);
                None
            }
            Err(e) => Some(kind(e)),
        },
    };
    (
        got,
        err.map(|k| k.expect("every body error carries an amphi Error")),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_chunking_reads_the_same_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(0usize..600, 0..40),
        empties in proptest::collection::vec(0usize..40, 0..5),
        declare_len in any::<bool>(),
        way in way(),
    ) {
        let mut body = BlockingBody::from_chunks(chunk(&data, cuts, &empties));
        if declare_len {
            body = body.with_content_length(data.len() as u64);
        }
        let (got, err) = read_all(&mut body, way);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&got, &data);
        prop_assert_eq!(body.bytes_read(), data.len() as u64);
        // At the end it stays at the end.
        prop_assert_eq!(body.read(&mut [0; 8]).unwrap(), 0);
    }

    #[test]
    fn limit_is_exact_whatever_the_chunking(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(0usize..400, 0..30),
        limit in 0u64..450,
        way in way(),
    ) {
        let mut body = BlockingBody::from_chunks(chunk(&data, cuts, &[])).with_limit(limit);
        let (got, err) = read_all(&mut body, way);
        if data.len() as u64 <= limit {
            prop_assert_eq!(err, None);
            prop_assert_eq!(&got, &data);
        } else {
            prop_assert_eq!(err, Some(ErrorKind::BodyTooLarge));
            prop_assert!(got.len() as u64 <= limit, "no byte past the limit is handed out");
            prop_assert_eq!(&got[..], &data[..got.len()]);
            // Errors are sticky.
            let again = body.read(&mut [0; 4]).unwrap_err();
            prop_assert_eq!(Error::from_io(&again).map(|e| e.kind()), Some(ErrorKind::BodyTooLarge));
        }
    }

    #[test]
    fn short_and_long_bodies_against_content_length(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..20),
        declared in 0u64..350,
        way in way(),
    ) {
        let mut body = BlockingBody::from_chunks(chunk(&data, cuts, &[])).with_content_length(declared);
        let (got, err) = read_all(&mut body, way);
        if (data.len() as u64) < declared {
            prop_assert_eq!(err, Some(ErrorKind::IncompleteBody));
            prop_assert_eq!(&got[..], &data[..got.len()]);
        } else {
            // A longer source is cut at the declared length (PEP 3333: EOF at CONTENT_LENGTH).
            prop_assert_eq!(err, None);
            prop_assert_eq!(&got[..], &data[..declared as usize]);
        }
    }

    #[test]
    fn disconnect_anywhere_is_reported_after_the_bytes_before_it(
        data in proptest::collection::vec(any::<u8>(), 1..300),
        cuts in proptest::collection::vec(0usize..300, 0..20),
        at in any::<prop::sample::Index>(),
        way in way(),
    ) {
        let mut chunks = chunk(&data, cuts, &[]);
        let cut = at.index(chunks.len() + 1);
        chunks.truncate(cut);
        let before: Vec<u8> = chunks.iter().flat_map(|c| c.as_ref().unwrap().to_vec()).collect();
        chunks.push(Err(Error::new(ErrorKind::Disconnected)));
        let mut body = BlockingBody::from_chunks(chunks);
        let (got, err) = read_all(&mut body, way);
        prop_assert_eq!(err, Some(ErrorKind::Disconnected));
        prop_assert_eq!(&got[..], &before[..got.len()]);
        let again = body.read(&mut [0; 4]).unwrap_err();
        prop_assert_eq!(again.kind(), std::io::ErrorKind::ConnectionAborted);
    }
}
