//! Proxy headers: which peers are trusted proxies, and what a trusted one's `Forwarded` or
//! `X-Forwarded-*` headers say about the client.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName};
use http::uri::{Authority, Scheme};
use ipnet::IpNet;

/// The peers whose proxy headers are believed: addresses, CIDR ranges, and unix-socket peers.
///
/// A request whose connection comes from a trusted proxy has its client, scheme and host taken
/// from the proxy headers (see [`Server::trusted_proxies`](crate::Server::trusted_proxies));
/// any other request keeps the connection's own, and its proxy headers reach the handler
/// untouched but change nothing. Empty by default: nothing is trusted.
///
/// Parsed from a comma-separated list, as uvicorn's `--forwarded-allow-ips`: IP addresses
/// (`127.0.0.1`, `::1`), CIDR ranges (`10.0.0.0/8`, `fd00::/8`), `unix` for a peer on a unix
/// socket, and `*` for every peer (only when nothing but the proxy can reach the server).
/// IPv4-mapped IPv6 peers (`::ffff:10.1.2.3`) are matched as the IPv4 address they map.
///
/// # Examples
///
/// ```
/// use amphi_server::TrustedProxies;
///
/// let trusted: TrustedProxies = "127.0.0.1, 10.0.0.0/8, unix".parse().unwrap();
/// assert!(trusted.contains("10.1.2.3".parse().unwrap()));
/// assert!(!trusted.contains("192.0.2.1".parse().unwrap()));
/// assert!(trusted.trusts_unix());
/// assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    unix: bool,
}

/// A trusted-proxy list that does not parse: the entry that is neither an address, a CIDR
/// range, `unix` nor `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseProxiesError {
    entry: String,
}

impl fmt::Display for ParseProxiesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid trusted proxy `{}`: expected an IP address, a CIDR range, `unix` or `*`",
            self.entry
        )
    }
}

impl std::error::Error for ParseProxiesError {}

impl TrustedProxies {
    /// Trusts nothing.
    pub fn new() -> TrustedProxies {
        TrustedProxies::default()
    }

    /// Also trusts `entry`: an address, a CIDR range, `unix` or `*`.
    ///
    /// # Errors
    ///
    /// When `entry` is none of those.
    pub fn with(mut self, entry: &str) -> Result<TrustedProxies, ParseProxiesError> {
        let entry = entry.trim();
        match entry {
            "unix" => self.unix = true,
            "*" => {
                self.nets.push(IpNet::V4(Default::default()));
                self.nets.push(IpNet::V6(Default::default()));
                self.unix = true;
            }
            _ => {
                let net = match entry.parse::<IpNet>() {
                    Ok(net) => net.trunc(),
                    Err(_) => entry
                        .parse::<IpAddr>()
                        .map(|ip| IpNet::from(ip.to_canonical()))
                        .map_err(|_| ParseProxiesError {
                            entry: entry.to_owned(),
                        })?,
                };
                self.nets.push(net);
            }
        }
        Ok(self)
    }

    /// Whether a peer at `ip` is trusted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether a peer on a unix socket is trusted.
    pub fn trusts_unix(&self) -> bool {
        self.unix
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && !self.unix
    }

    /// Whether the peer of a connection is trusted: `None` is a unix-socket peer.
    pub(crate) fn trusts_peer(&self, peer: Option<SocketAddr>) -> bool {
        match peer {
            Some(addr) => self.contains(addr.ip()),
            None => self.unix,
        }
    }
}

impl FromStr for TrustedProxies {
    type Err = ParseProxiesError;

    fn from_str(list: &str) -> Result<TrustedProxies, ParseProxiesError> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .try_fold(TrustedProxies::new(), TrustedProxies::with)
    }
}

/// What a trusted proxy's headers say about the request, each part only when they say it
/// validly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Forwarded {
    /// The client: `Some(None)` when the hop that is the client is not an address (`unknown`,
    /// an obfuscated name).
    pub(crate) client: Option<Option<SocketAddr>>,
    pub(crate) scheme: Option<Scheme>,
    pub(crate) host: Option<Authority>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Reads the proxy headers of a request whose peer is a trusted proxy. `Forwarded` (RFC
/// 7239) wins when it is present and has at least one element; otherwise `X-Forwarded-For`,
/// `-Proto` and `-Host`.
///
/// The client is found by walking the hops from the right (the one the trusted peer added)
/// and skipping those that are themselves trusted proxies: the first that is not is the
/// client, and when all are trusted, the leftmost. Everything left of it could have been
/// written by the client and is ignored. With `Forwarded`, the scheme and host are those of
/// the element the walk stopped at (what the first trusted proxy saw); with `X-Forwarded-*`,
/// the rightmost values of `-Proto` and `-Host` (what the trusted peer says).
pub(crate) fn read(headers: &HeaderMap, trusted: &TrustedProxies) -> Forwarded {
    if let Some(f) = read_forwarded(headers, trusted) {
        return f;
    }
    let mut out = Forwarded::default();
    let hops: Vec<&str> = list(headers, &X_FORWARDED_FOR).collect();
    if let Some(hop) = walk(&hops, trusted, |h| parse_node(h, false)) {
        out.client = Some(parse_node(hop, false));
    }
    out.scheme = list(headers, &X_FORWARDED_PROTO)
        .next_back()
        .and_then(parse_scheme);
    out.host = list(headers, &X_FORWARDED_HOST)
        .next_back()
        .and_then(parse_host);
    out
}

/// The `Forwarded` header's reading, `None` when it has no element.
fn read_forwarded(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<Forwarded> {
    if !headers.contains_key(http::header::FORWARDED) {
        return None;
    }
    let elements: Vec<&str> = list(headers, &http::header::FORWARDED).collect();
    let element = walk(&elements, trusted, |e| {
        pair(e, "for").and_then(|v| parse_node(v, true))
    })?;
    Some(Forwarded {
        client: pair(element, "for").map(|v| parse_node(v, true)),
        scheme: pair(element, "proto").and_then(parse_scheme),
        host: pair(element, "host").and_then(parse_host),
    })
}

/// The comma-separated items of every `name` header, in order, trimmed, empty ones dropped.
/// A header that is not visible ASCII is skipped whole. (A quoted comma inside a `Forwarded`
/// value would split it: no valid `for`, `proto` or `host` value contains one.)
fn list<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> impl DoubleEndedIterator<Item = &'h str> + 'h {
    let values: Vec<&'h str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The hop that is the client: from the right, the first whose address is not a trusted
/// proxy (one that is not an address stops the walk too); the leftmost when all are trusted.
fn walk<'a>(
    hops: &[&'a str],
    trusted: &TrustedProxies,
    addr: impl Fn(&'a str) -> Option<SocketAddr>,
) -> Option<&'a str> {
    let last = *hops.first()?;
    for hop in hops.iter().rev() {
        match addr(hop) {
            Some(a) if trusted.contains(a.ip()) => continue,
            _ => return Some(hop),
        }
    }
    Some(last)
}

/// The value of `key` in one `Forwarded` element (`for=1.2.3.4;proto=https`), unquoted.
fn pair<'a>(element: &'a str, key: &str) -> Option<&'a str> {
    element.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(key) {
            return None;
        }
        let v = v.trim();
        Some(
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v),
        )
    })
}

/// A hop's address: `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, and for `X-Forwarded-For`
/// also a bare `::1`. No port is port 0. `unknown`, obfuscated names (`_hidden`) and
/// anything else: `None`.
fn parse_node(node: &str, rfc7239: bool) -> Option<SocketAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        // RFC 7239 wants IPv6 in brackets; proxies writing X-Forwarded-For do not.
        if rfc7239 && ip.is_ipv6() {
            return None;
        }
        return Some(SocketAddr::new(ip.to_canonical(), 0));
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()));
    }
    let ip = node.strip_prefix('[')?.strip_suffix(']')?;
    let ip: std::net::Ipv6Addr = ip.parse().ok()?;
    Some(SocketAddr::new(IpAddr::V6(ip).to_canonical(), 0))
}

/// `http` or `https` (and `ws`, `wss` as proxies write them for websockets), any case.
fn parse_scheme(proto: &str) -> Option<Scheme> {
    match proto.to_ascii_lowercase().as_str() {
        "https" | "wss" => Some(Scheme::HTTPS),
        "http" | "ws" => Some(Scheme::HTTP),
        _ => None,
    }
}

/// A host as a request authority (`example.com`, `example.com:8443`, `[::1]:80`), without
/// user info.
fn parse_host(host: &str) -> Option<Authority> {
    let authority: Authority = host.parse().ok()?;
    (!authority.as_str().contains('@') && !authority.host().is_empty()).then_some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn trusted(list: &str) -> TrustedProxies {
        list.parse().unwrap()
    }

    fn client(f: &Forwarded) -> Option<String> {
        f.client.flatten().map(|a| a.to_string())
    }

    #[test]
    fn the_list_parses_addresses_ranges_unix_and_star() {
        let t = trusted("127.0.0.1, 10.0.0.0/8 ,fd00::/8,unix");
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        assert!(t.contains("10.255.0.1".parse().unwrap()));
        assert!(t.contains("fd00::1".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(t.trusts_unix());
        assert!(t.trusts_peer(None));
        assert!(!trusted("127.0.0.1").trusts_peer(None));
        let all = trusted("*");
        assert!(all.contains("192.0.2.1".parse().unwrap()) && all.contains("::1".parse().unwrap()));
        assert!(trusted("").is_empty());
        // A range with host bits set covers its network.
        assert!(trusted("10.1.2.3/8").contains("10.9.9.9".parse().unwrap()));
        for bad in ["10.0.0.0/33", "localhost", "1.2.3", "unix:/x"] {
            let err = bad.parse::<TrustedProxies>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn x_forwarded_for_walks_from_the_right_skipping_trusted_proxies() {
        let t = trusted("127.0.0.1, 10.0.0.0/8");
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.5")]);
        assert_eq!(client(&read(&h, &t)).as_deref(), Some("2.2.2.2:0"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("x-forwarded-for", "3.3.3.3, 10.1.1.1"),
        ]);
        assert_eq!(client(&read(&h, &t)).as_deref(), Some("3.3.3.3:0"));
        // All trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(client(&read(&h, &t)).as_deref(), Some("10.0.0.1:0"));
        // Ports and bare IPv6.
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:4711")]);
        assert_eq!(client(&read(&h, &t)).as_deref(), Some("[2001:db8::1]:4711"));
        let h = headers(&[("x-forwarded-for", "2001:db8::1")]);
        assert_eq!(client(&read(&h, &t)).as_deref(), Some("[2001:db8::1]:0"));
        // Garbage as the client hop: the client is unknown, never the garbage's left.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.1")]);
        assert_eq!(read(&h, &t).client, Some(None));
        // No header: nothing.
        assert_eq!(read(&HeaderMap::new(), &t), Forwarded::default());
    }

    #[test]
    fn x_forwarded_proto_and_host_take_the_rightmost_valid_value() {
        let t = trusted("127.0.0.1");
        let h = headers(&[
            ("x-forwarded-proto", "http, HTTPS"),
            ("x-forwarded-host", "evil.example, example.com:8443"),
        ]);
        let f = read(&h, &t);
        assert_eq!(f.scheme, Some(Scheme::HTTPS));
        assert_eq!(f.host.unwrap().as_str(), "example.com:8443");
        let h = headers(&[
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "user@example.com"),
        ]);
        let f = read(&h, &t);
        assert_eq!((f.scheme, f.host), (None, None));
    }

    #[test]
    fn forwarded_wins_and_reads_the_element_the_walk_stops_at() {
        let t = trusted("127.0.0.1, 10.0.0.0/8");
        let h = headers(&[
            (
                "forwarded",
                r#"for=1.1.1.1;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;host=example.com, for=10.0.0.9;proto=http;host=inner"#,
            ),
            ("x-forwarded-for", "5.5.5.5"),
        ]);
        let f = read(&h, &t);
        assert_eq!(client(&f).as_deref(), Some("[2001:db8:cafe::17]:4711"));
        assert_eq!(f.scheme, Some(Scheme::HTTPS));
        assert_eq!(f.host.unwrap().as_str(), "example.com");
        // `unknown` and obfuscated identifiers: a client without an address.
        let h = headers(&[("forwarded", "for=unknown;proto=https")]);
        let f = read(&h, &t);
        assert_eq!(f.client, Some(None));
        assert_eq!(f.scheme, Some(Scheme::HTTPS));
        // An element without `for`: the scheme still counts, the client is untold.
        let h = headers(&[("forwarded", "proto=https;by=10.0.0.1")]);
        let f = read(&h, &t);
        assert_eq!((f.client, f.scheme), (None, Some(Scheme::HTTPS)));
        // Unbracketed IPv6 is not RFC 7239.
        let h = headers(&[("forwarded", "for=2001:db8::1")]);
        assert_eq!(read(&h, &t).client, Some(None));
        // Case-insensitive keys, quoted IPv4 with a port.
        let h = headers(&[("forwarded", r#"For="192.0.2.60:8080";PROTO=https"#)]);
        let f = read(&h, &t);
        assert_eq!(client(&f).as_deref(), Some("192.0.2.60:8080"));
        assert_eq!(f.scheme, Some(Scheme::HTTPS));
    }
}
