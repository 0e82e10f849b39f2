//! What the server does to make each request observable: its `tracing` span, its
//! `x-request-id`, and (feature `metrics`) the counters it is recorded into.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use amphi_core::Context;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::access::HandlerKind;
use crate::app::Route;
use crate::conn::ConnState;

/// The request id header: honoured when the client sends a sane one, else generated; always
/// returned on the response while request spans are on.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a client; a longer one is replaced.
pub(crate) const MAX_REQUEST_ID: usize = 128;

/// The server's observability settings and hooks, one per app.
#[derive(Default)]
pub(crate) struct Observe {
    /// One span per request and an `x-request-id`: `Server::request_spans`.
    pub(crate) spans: bool,
    /// The index of the counters of requests no route takes, when the server keeps metrics.
    #[cfg(feature = "metrics")]
    pub(crate) unmatched: Option<u32>,
}

/// What one request carries for observability: its span and its id.
pub(crate) struct RequestObs {
    pub(crate) span: RequestSpan,
    pub(crate) id: Option<HeaderValue>,
}

/// A request's span, where the request keeps it (its record, its driver): boxed, and only
/// when a subscriber wants it, so a request without one carries a null pointer and its
/// futures stay as small as without spans.
#[derive(Default, Clone)]
pub(crate) struct RequestSpan(Option<Box<tracing::Span>>);

impl RequestSpan {
    pub(crate) fn new(span: tracing::Span) -> RequestSpan {
        RequestSpan((!span.is_disabled()).then(|| Box::new(span)))
    }

    /// Enters the span, if there is one, until the guard drops.
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.0.as_deref().map(tracing::Span::enter)
    }

    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

impl Observe {
    /// The span and id of a request to `route` (`None`: no route took it), or nothing when
    /// request spans are off.
    pub(crate) fn request(
        &self,
        method: &Method,
        headers: &HeaderMap,
        route: Option<&Route>,
        kind: HandlerKind,
    ) -> RequestObs {
        if !self.spans {
            return RequestObs {
                span: RequestSpan::default(),
                id: None,
            };
        }
        let id = crate::reply::get(headers, &X_REQUEST_ID)
            .filter(|v| is_sane(v.as_bytes()))
            .cloned()
            .unwrap_or_else(generate);
        let route = route.map_or("unmatched", Route::label);
        // Display fields: `request{method=GET route=/sync ...}` in fmt's output, unquoted.
        let span = tracing::info_span!(
            target: "amphi::request",
            "request",
            method = %method.as_str(),
            route = %route,
            kind = %kind.as_str(),
            request_id = %id.to_str().unwrap_or_default(),
        );
        RequestObs {
            span: RequestSpan::new(span),
            id: Some(id),
        }
    }
}

/// The context of a request to `route` on `conn`: observed by the route's counters when the
/// server keeps metrics, so its crossings are counted against it.
///
/// Behind tower layers (`Router::layer`: no connection of its own), the request is the inner
/// half of an outer one, whose context is current while the layers call and poll the inner
/// router: it is the parent, so the outer route's observer counts the inner crossings and the
/// outer request's cancellation reaches them.
pub(crate) fn request_context(route: &Route, conn: Option<&ConnState>) -> Context {
    #[cfg(feature = "tower")]
    if conn.is_none() {
        if let Some(outer) = Context::current() {
            return outer.child();
        }
    }
    #[cfg(feature = "metrics")]
    if let (Some(i), Some(conn)) = (route.stats, conn) {
        if let Some(o) = crate::metrics::observer(conn, i as usize) {
            return amphi_core::plumbing::observed_context(o);
        }
    }
    let _ = (route, conn);
    Context::new()
}

/// Whether a client's request id is used as it is: 1 to [`MAX_REQUEST_ID`] visible ASCII
/// characters (no spaces, no control characters), so it is safe in logs and headers.
pub(crate) fn is_sane(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(|b| b.is_ascii_graphic())
}

/// A new request id: one 64-bit number in 16 hex digits, this process's random 24 bits on top
/// of a 40-bit counter (unique within the process for 2^40 requests). No random number is
/// drawn per request, and threads take counter values in blocks of [`BLOCK`] ids, written
/// together into one buffer that the block's ids share: one atomic add and one allocation
/// per block, and an id is a slice of it.
pub(crate) fn generate() -> HeaderValue {
    thread_local! {
        /// This thread's block: its ids, and the offset of the next one.
        static IDS: std::cell::RefCell<(bytes::Bytes, usize)> =
            const { std::cell::RefCell::new((bytes::Bytes::new(), 0)) };
    }
    let id = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.1 == ids.0.len() {
            *ids = (block(), 0);
        }
        let at = ids.1;
        ids.1 += ID_LEN;
        ids.0.slice(at..at + ID_LEN)
    });
    HeaderValue::from_maybe_shared(id).expect("hex digits are a valid header value")
}

/// How many ids a thread takes at a time.
const BLOCK: u64 = 256;

/// The length of a generated id: 64 bits in hex.
const ID_LEN: usize = 16;

/// The next block of ids, written out. A block starts at a multiple of [`BLOCK`], so its
/// ids differ in their last two hex digits only: the rest is written once and copied.
#[cold]
fn block() -> bytes::Bytes {
    const COUNTER_BITS: u32 = 40;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let first = NEXT.fetch_add(BLOCK, Ordering::Relaxed) & ((1 << COUNTER_BITS) - 1);
    let id = (prefix() << COUNTER_BITS) | first;
    let mut stem = [0u8; ID_LEN - 2];
    for (i, digit) in stem.iter_mut().enumerate() {
        *digit = HEX[(id >> (4 * (ID_LEN - 1 - i))) as usize & 0xf];
    }
    let mut buf = vec![0u8; BLOCK as usize * ID_LEN];
    for (low, id) in buf.chunks_exact_mut(ID_LEN).enumerate() {
        id[..ID_LEN - 2].copy_from_slice(&stem);
        id[ID_LEN - 2..].copy_from_slice(&[HEX[low >> 4], HEX[low & 0xf]]);
    }
    buf.into()
}

/// 24 random bits, once per process: std's `RandomState` is seeded from the OS.
fn prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() & 0xff_ffff
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_sane_and_share_the_process_prefix() {
        let ids: Vec<u64> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..3)
                .map(|_| s.spawn(|| (0..5000).map(|_| generate()).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .map(|id| {
                    assert!(is_sane(id.as_bytes()), "{id:?}");
                    assert_eq!(id.len(), ID_LEN, "{id:?}");
                    u64::from_str_radix(id.to_str().unwrap(), 16).unwrap()
                })
                .collect()
        });
        let unique: std::collections::HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "no id twice, across threads and blocks"
        );
        assert!(ids.iter().all(|id| id >> 40 == prefix()));
    }

    #[test]
    fn client_ids_must_be_short_visible_ascii() {
        assert!(is_sane(b"req-42_abc.DEF"));
        assert!(is_sane(&[b'a'; MAX_REQUEST_ID]));
        assert!(!is_sane(&[b'a'; MAX_REQUEST_ID + 1]));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane(b"tab\there"));
        assert!(!is_sane("caf\u{e9}".as_bytes()));
    }
}
