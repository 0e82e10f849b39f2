//! The error type: kinds and predicates, `Display` in the house style, the `source()` chain,
//! and the round trip through `io::Error` that body reads and writes rely on.

use std::error::Error as _;
use std::io;

use amphi_core::{Error, ErrorKind};

const KINDS: [ErrorKind; 11] = [
    ErrorKind::Disconnected,
    ErrorKind::BodyTooLarge,
    ErrorKind::IncompleteBody,
    ErrorKind::Protocol,
    ErrorKind::Saturated,
    ErrorKind::Panicked,
    ErrorKind::Cancelled,
    ErrorKind::WrongContext,
    ErrorKind::Handler,
    ErrorKind::TimedOut,
    ErrorKind::Other,
];

/// Which predicate answers for each kind (`None`: no predicate, ask `kind()`).
fn predicate_of(kind: ErrorKind) -> Option<fn(&Error) -> bool> {
    Some(match kind {
        ErrorKind::Disconnected => Error::is_disconnected,
        ErrorKind::BodyTooLarge => Error::is_body_too_large,
        ErrorKind::IncompleteBody => Error::is_incomplete_body,
        ErrorKind::Protocol => Error::is_protocol,
        ErrorKind::Saturated => Error::is_saturated,
        ErrorKind::Panicked => Error::is_panic,
        ErrorKind::Cancelled => Error::is_cancelled,
        ErrorKind::WrongContext => Error::is_wrong_context,
        ErrorKind::TimedOut => Error::is_timeout,
        _ => return None,
    })
}

fn assert_house_style(text: &str) {
    assert!(!text.is_empty());
    let first = text.chars().next().unwrap();
    assert!(!first.is_uppercase(), "starts lowercase: {text:?}");
    assert!(!text.ends_with('.'), "no trailing period: {text:?}");
    assert_eq!(text.trim(), text, "no stray whitespace: {text:?}");
}

#[test]
fn each_kind_answers_its_own_predicate_only() {
    for kind in KINDS {
        let err = Error::new(kind);
        assert_eq!(err.kind(), kind);
        for other in KINDS {
            if let Some(is) = predicate_of(other) {
                assert_eq!(
                    is(&err),
                    kind == other,
                    "{other:?} predicate on a {kind:?} error"
                );
            }
        }
    }
}

#[test]
fn display_is_lowercase_without_a_trailing_period() {
    let mut seen = std::collections::HashSet::new();
    for kind in KINDS {
        let text = Error::new(kind).to_string();
        assert_house_style(&text);
        assert_eq!(
            text,
            kind.to_string(),
            "an error without detail shows its kind"
        );
        assert!(seen.insert(text), "{kind:?} has a message of its own");
        let detailed = Error::new(kind).with_message("42 of 42 slots busy");
        assert_eq!(detailed.to_string(), format!("{kind}: 42 of 42 slots busy"));
        assert_eq!(detailed.message(), Some("42 of 42 slots busy"));
    }
    assert_eq!(Error::new(ErrorKind::Other).message(), None);
    // The messages amphi itself produces follow the style too.
    assert_house_style(
        &Error::protocol("http.response.body sent before http.response.start").to_string(),
    );
    assert_house_style(&Error::from_panic(&"boom").to_string());
}

#[test]
fn constructors_set_kind_message_and_source() {
    let err = Error::protocol("a second start");
    assert!(err.is_protocol());
    assert_eq!(err.to_string(), "protocol misuse: a second start");
    assert!(err.source().is_none());

    let err = Error::handler(io::Error::other("database is locked"));
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.to_string(), "handler error");
    assert_eq!(err.source().unwrap().to_string(), "database is locked");

    let boxed: Box<dyn std::error::Error + Send + Sync> = "a plain string error".into();
    let err = Error::handler(boxed);
    assert_eq!(err.source().unwrap().to_string(), "a plain string error");

    assert_eq!(
        Error::from_panic(&"static str").message(),
        Some("static str")
    );
    assert_eq!(
        Error::from_panic(&String::from("formatted 7")).to_string(),
        "handler panicked: formatted 7"
    );
    assert_eq!(
        Error::from_panic(&7u8).message(),
        Some("non-string panic payload")
    );
    // A real panic payload, as catch_unwind hands it over.
    let payload = std::panic::catch_unwind(|| panic!("caught {}", 1)).unwrap_err();
    assert_eq!(Error::from_panic(&*payload).message(), Some("caught 1"));
}

#[test]
fn the_source_chain_can_be_walked_and_downcast() {
    let root = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
    let middle = Error::new(ErrorKind::Disconnected).with_source(root);
    let top = Error::new(ErrorKind::Handler)
        .with_message("render failed")
        .with_source(middle);

    let mut chain = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&top);
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    assert_eq!(
        chain,
        [
            "handler error: render failed",
            "client disconnected",
            "reset by peer"
        ]
    );
    let middle = top.source().unwrap().downcast_ref::<Error>().unwrap();
    assert!(middle.is_disconnected());
    let root = middle
        .source()
        .unwrap()
        .downcast_ref::<io::Error>()
        .unwrap();
    assert_eq!(root.kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn io_round_trip_keeps_the_kind_message_and_source() {
    let expected_io = |kind: ErrorKind| match kind {
        ErrorKind::Disconnected | ErrorKind::Cancelled => io::ErrorKind::ConnectionAborted,
        ErrorKind::BodyTooLarge => io::ErrorKind::InvalidData,
        ErrorKind::IncompleteBody => io::ErrorKind::UnexpectedEof,
        ErrorKind::TimedOut => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    for kind in KINDS {
        let io_err = Error::new(kind)
            .with_message("detail")
            .with_source(io::Error::other("cause"))
            .into_io();
        assert_eq!(io_err.kind(), expected_io(kind), "{kind:?}");
        assert_eq!(io_err.to_string(), format!("{kind}: detail"));
        let found = Error::from_io(&io_err).expect("the amphi error is inside");
        assert_eq!(found.kind(), kind);
        let back = Error::from(io_err);
        assert_eq!(back.kind(), kind);
        assert_eq!(back.message(), Some("detail"));
        assert_eq!(back.source().unwrap().to_string(), "cause");
    }
}

#[test]
fn a_foreign_io_error_becomes_other_with_it_as_the_source() {
    let foreign = io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed");
    assert!(Error::from_io(&foreign).is_none());
    assert!(Error::from_io(&io::Error::from(io::ErrorKind::NotFound)).is_none());
    let err = Error::from(foreign);
    assert_eq!(err.kind(), ErrorKind::Other);
    let source = err.source().unwrap().downcast_ref::<io::Error>().unwrap();
    assert_eq!(source.kind(), io::ErrorKind::BrokenPipe);
    // An io::Error wrapping some other error type is foreign too.
    let wrapped = io::Error::other(std::fmt::Error);
    assert!(Error::from_io(&wrapped).is_none());
}

#[test]
fn errors_travel_between_threads_and_through_question_marks() {
    fn assert_traits<T: Send + Sync + 'static + std::error::Error>() {}
    assert_traits::<Error>();

    fn read_body() -> Result<(), Error> {
        let io_err: io::Error = Error::new(ErrorKind::BodyTooLarge).into_io();
        Err(io_err)?
    }
    assert!(read_body().unwrap_err().is_body_too_large());

    fn boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err(Error::new(ErrorKind::Saturated))?
    }
    let err = boxed().unwrap_err();
    assert!(err.downcast_ref::<Error>().unwrap().is_saturated());
}

#[test]
fn debug_shows_kind_message_and_source() {
    let err = Error::new(ErrorKind::Saturated)
        .with_message("64 busy")
        .with_source(io::Error::other("queue"));
    let dbg = format!("{err:?}");
    assert!(dbg.contains("Saturated"), "{dbg}");
    assert!(dbg.contains("64 busy"), "{dbg}");
    assert!(dbg.contains("queue"), "{dbg}");
    assert_eq!(
        format!("{:?}", Error::new(ErrorKind::Other)),
        "Error { kind: Other }"
    );
}
