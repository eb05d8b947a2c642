//! HTTP/1.x as the proxy needs it, pure: a request head read and rewritten for the member in one
//! pass (hop-by-hop headers dropped, `X-Forwarded-*` added, origin form), a response head checked
//! for its framing and passed on untouched unless it must change, the chunked framing walked so the
//! proxy knows where a body ends, and the load balancer's own answers. No I/O, no allocation beyond
//! the caller's buffers.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::ops::Range;

/// Most headers in one message.
pub const MAX_HEADERS: usize = 100;
/// Largest head (request line or status line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// A client's request head, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head in the buffer.
    pub head_len: usize,
    /// The host name (from `Host`, or the absolute-form target), as a range of the buffer.
    pub host: Range<usize>,
    /// The body's framing (never `UntilClose`).
    pub framing: Framing,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// The client keeps the connection after this exchange.
    pub keep_alive: bool,
    /// A method that may be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// A `HEAD` request (its response has no body whatever its headers say).
    pub head_method: bool,
    /// The client asks to switch protocols (`Connection: upgrade` with `Upgrade`).
    pub upgrade: bool,
}

/// A member's response head, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head in the buffer.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// The body's framing.
    pub framing: Framing,
    /// An interim response (1xx other than 101): the final one follows.
    pub interim: bool,
    /// `101 Switching Protocols` to an upgrade request.
    pub switching: bool,
    /// The member's connection can carry another request once the body is read.
    pub upstream_keep: bool,
    /// The client's connection stays open after this response.
    pub client_keep: bool,
    /// The head to send is in the caller's buffer (rewritten), not the member's bytes.
    pub rewritten: bool,
    /// The client speaks HTTP/1.0 and the body is chunked: send the data only, then close.
    pub dechunk: bool,
}

/// Why a head cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than [`MAX_HEAD`] or more than [`MAX_HEADERS`] headers (431 for a request).
    TooLarge,
    /// Not HTTP (400 for a request, 502 for a response).
    Malformed(&'static str),
    /// Valid HTTP the proxy does not pass on (501).
    Unsupported(&'static str),
}

/// What the proxy adds about the client.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client's address.
    pub peer_ip: &'a [u8],
    /// The proxy port the request came in on.
    pub port: &'a [u8],
    /// Whether the client's connection is TLS (`X-Forwarded-Proto: https`).
    pub secure: bool,
}

const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
];

/// Headers a `Connection` option may never remove: the message's routing and framing.
const END_TO_END: [&[u8]; 3] = [b"host", b"content-length", b"transfer-encoding"];

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end.max(start)]
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|c| *c == b',').map(trim).filter(|t| !t.is_empty())
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Up to this many names listed in a `Connection` header are honoured (dropped from the message).
const MAX_LISTED: usize = 8;

/// What the `Connection`, `Content-Length` and `Transfer-Encoding` headers of a message say.
#[derive(Default)]
struct Meta<'a> {
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    listed: [&'a [u8]; MAX_LISTED],
    n_listed: usize,
    length: Option<u64>,
    chunked: bool,
    other_coding: bool,
    hop: bool,
}

impl<'a> Meta<'a> {
    fn read(headers: &[httparse::Header<'a>]) -> Result<Self, HeadError> {
        let mut m = Meta::default();
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_length(h.value).ok_or(HeadError::Malformed("bad Content-Length"))?;
                if m.length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length headers"));
                }
                m.length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                for t in tokens(h.value) {
                    // Chunked must come last; anything after it means the framing is unknown.
                    if m.chunked {
                        m.other_coding = true;
                    }
                    if t.eq_ignore_ascii_case(b"chunked") {
                        m.chunked = true;
                    } else {
                        m.other_coding = true;
                    }
                }
            } else if is_hop_by_hop(name) {
                m.hop = true;
                if name.eq_ignore_ascii_case(b"connection") {
                    for t in tokens(h.value) {
                        if t.eq_ignore_ascii_case(b"close") {
                            m.close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            m.keep_alive = true;
                        } else if t.eq_ignore_ascii_case(b"upgrade") {
                            m.upgrade_token = true;
                        } else if END_TO_END.iter().any(|e| t.eq_ignore_ascii_case(e)) {
                            // Dropping it on the way would change where the message goes or
                            // where it ends (a request smuggled inside another's body). RFC 9110
                            // §7.6.1 forbids sending such an option. Found by the `h1` fuzz
                            // target.
                            return Err(HeadError::Malformed(
                                "Connection names a header the message needs end to end",
                            ));
                        } else if m.n_listed < MAX_LISTED {
                            m.listed[m.n_listed] = t;
                            m.n_listed += 1;
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    fn listed(&self, name: &[u8]) -> bool {
        self.listed[..self.n_listed]
            .iter()
            .any(|l| l.eq_ignore_ascii_case(name))
    }

    /// Drop this header when passing the message on.
    fn drops(&self, name: &[u8]) -> bool {
        self.hop && (is_hop_by_hop(name) || self.listed(name))
    }
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads a request head from the start of `buf`. `Ok(None)`: not complete yet. On success `out`
/// holds the head to send to a member: origin form, HTTP/1.1, the client's headers without the
/// hop-by-hop ones (an upgrade keeps `Upgrade` and says `Connection: upgrade`), and
/// `X-Forwarded-For` (appended to), `-Proto`, `-Host` and `-Port` (replaced).
pub fn parse_request(
    buf: &[u8],
    fwd: Forwarded<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if head_len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or("GET");
    let target = req.path.unwrap_or("/").as_bytes();
    let minor = req.version.unwrap_or(1);
    let meta = Meta::read(req.headers)?;
    if meta.other_coding {
        return Err(HeadError::Unsupported(
            "a transfer coding other than chunked",
        ));
    }
    if meta.chunked && meta.length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    // Absolute form (`GET http://host/path`): the authority is the host, the path goes on.
    let (authority, path): (Option<&[u8]>, &[u8]) = match target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))
    {
        Some(rest) => {
            let slash = rest.iter().position(|c| *c == b'/').unwrap_or(rest.len());
            let path: &[u8] = if slash == rest.len() {
                b"/"
            } else {
                &rest[slash..]
            };
            (Some(&rest[..slash]), path)
        }
        None => (None, target),
    };
    let mut host_header: Option<&[u8]> = None;
    let mut upgrade_header = false;
    let mut forwarded_for_seen = false;
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(HeadError::Malformed("more than one Host header"));
            }
            host_header = Some(trim(h.value));
        } else if name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") {
            let rest = &name[12..];
            if rest.eq_ignore_ascii_case(b"for") {
                forwarded_for_seen = true;
                continue;
            }
            if rest.eq_ignore_ascii_case(b"proto")
                || rest.eq_ignore_ascii_case(b"host")
                || rest.eq_ignore_ascii_case(b"port")
            {
                continue;
            }
        } else if name.eq_ignore_ascii_case(b"x-tenant-domain")
            || name.eq_ignore_ascii_case(b"x-tenant-id")
        {
            // The load balancer tells the members the tenant of a mapped domain; a client's
            // own claim is never passed on.
            continue;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_header = true;
            if meta.upgrade_token {
                put_header(out, name, h.value);
            }
            continue;
        }
        if meta.drops(name) {
            continue;
        }
        put_header(out, name, h.value);
    }
    let host = match (host_header, authority) {
        (Some(h), _) => offset(buf, h),
        (None, Some(a)) => {
            put_header(out, b"Host", a);
            offset(buf, a)
        }
        (None, None) if minor >= 1 => {
            return Err(HeadError::Malformed("missing Host header"));
        }
        (None, None) => {
            // An HTTP/1.0 client may send no Host; the member is spoken to in HTTP/1.1, which
            // requires one, empty when the target has no authority (RFC 9112 §3.2). Found by
            // the `h1` fuzz target.
            put_header(out, b"Host", b"");
            0..0
        }
    };
    // Earlier hops' addresses, then the client's.
    out.extend_from_slice(b"X-Forwarded-For: ");
    if forwarded_for_seen {
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                out.extend_from_slice(trim(h.value));
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(fwd.peer_ip);
    out.extend_from_slice(if fwd.secure {
        b"\r\nX-Forwarded-Proto: https\r\n"
    } else {
        b"\r\nX-Forwarded-Proto: http\r\n"
    });
    if !host.is_empty() {
        put_header(out, b"X-Forwarded-Host", &buf[host.clone()]);
    }
    put_header(out, b"X-Forwarded-Port", fwd.port);
    let upgrade = meta.upgrade_token && upgrade_header;
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let framing = if meta.chunked {
        Framing::Chunked
    } else {
        match meta.length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    Ok(Some(RequestHead {
        head_len,
        host,
        framing,
        minor,
        keep_alive: if minor >= 1 {
            !meta.close
        } else {
            meta.keep_alive && !meta.close
        },
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        head_method: method == "HEAD",
        upgrade,
    }))
}

/// Reads a member's response head (to `req`) from the start of `buf`. `Ok(None)`: not complete
/// yet. Most heads go to the client untouched; when one must change (hop-by-hop headers, the
/// client's connection closing, an HTTP/1.0 client) the head to send is written to `out` and
/// [`ResponseHead::rewritten`] is set.
pub fn parse_response(
    buf: &[u8],
    req: &RequestHead,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed response head")),
    };
    let status = resp.code.unwrap_or(502);
    let minor = resp.version.unwrap_or(1);
    let meta = Meta::read(resp.headers)?;
    let plain = |framing, switching, interim| ResponseHead {
        head_len,
        status,
        framing,
        interim,
        switching,
        upstream_keep: false,
        client_keep: false,
        rewritten: false,
        dechunk: false,
    };
    if status == 101 {
        if !req.upgrade {
            return Err(HeadError::Malformed(
                "101 Switching Protocols to a request that did not ask for it",
            ));
        }
        return Ok(Some(plain(Framing::None, true, false)));
    }
    if (100..200).contains(&status) {
        return Ok(Some(plain(Framing::None, false, true)));
    }
    let framing = if req.head_method || status == 204 || status == 304 {
        Framing::None
    } else if meta.chunked && !meta.other_coding {
        Framing::Chunked
    } else if meta.chunked || meta.other_coding {
        Framing::UntilClose
    } else {
        match meta.length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let wants_keep = if minor >= 1 {
        !meta.close
    } else {
        meta.keep_alive && !meta.close
    };
    let upstream_keep =
        wants_keep && framing != Framing::UntilClose && !(meta.chunked && meta.length.is_some());
    let dechunk = req.minor == 0 && framing == Framing::Chunked;
    let client_keep = req.keep_alive && framing != Framing::UntilClose && !dechunk;
    let say_close = !client_keep && req.minor >= 1;
    let say_keep = client_keep && req.minor == 0;
    let rewritten = meta.hop || say_close || say_keep || dechunk;
    if rewritten {
        out.clear();
        let line_end = buf
            .iter()
            .position(|c| *c == b'\n')
            .map_or(head_len, |i| i + 1);
        out.extend_from_slice(&buf[..line_end]);
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if meta.drops(name) || (dechunk && name.eq_ignore_ascii_case(b"transfer-encoding")) {
                continue;
            }
            put_header(out, name, h.value);
        }
        if say_close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if say_keep {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(Some(ResponseHead {
        upstream_keep,
        client_keep,
        rewritten,
        dechunk,
        ..plain(framing, false, false)
    }))
}

/// Where the chunked framing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// In the hexadecimal size.
    #[default]
    Size,
    /// In a chunk extension (skipped).
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data.
    Data,
    /// After the data: its CR.
    DataCr,
    /// After the data: its LF.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// In a trailer line.
    TrailerLine,
    /// After the final CR.
    FinalLf,
    /// The body has ended.
    Done,
}

/// Walks a chunked body, so the proxy knows where it ends (and can hand on the data alone).
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

impl Chunked {
    /// The body has ended.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Walks `data`, calling `payload` with the chunks' data, and returns how many bytes of
    /// `data` belong to the body: all of them until the end, then up to the end (what follows
    /// is the next message).
    pub fn advance(
        &mut self,
        data: &[u8],
        mut payload: impl FnMut(&[u8]),
    ) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < data.len() {
            let c = data[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data => {
                    let n = (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    payload(&data[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (c as char).to_digit(16).unwrap_or(0);
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Extension,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    b'\n' if self.digits > 0 => self.size_line_done(),
                    _ => return Err("malformed chunk size"),
                },
                ChunkState::Extension => match c {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_done(),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if c != b'\n' {
                        return Err("malformed chunk size line");
                    }
                    self.size_line_done();
                }
                ChunkState::DataCr => match c {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.next_chunk(),
                    _ => return Err("chunk data longer than its size"),
                },
                ChunkState::DataLf => {
                    if c != b'\n' {
                        return Err("malformed chunk end");
                    }
                    self.next_chunk();
                }
                ChunkState::TrailerStart => match c {
                    b'\r' => self.state = ChunkState::FinalLf,
                    b'\n' => self.state = ChunkState::Done,
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if c == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::FinalLf => {
                    if c != b'\n' {
                        return Err("malformed end of chunked body");
                    }
                    self.state = ChunkState::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn size_line_done(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }

    fn next_chunk(&mut self) {
        self.state = ChunkState::Size;
        self.size = 0;
        self.digits = 0;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// The load balancer's own answer: a short plain-text body saying what happened, marked with
/// `X-Nubo-Lb: 1`; `Retry-After: 1` when asked.
pub fn answer(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    retry_after: bool,
    keep_alive: bool,
    minor: u8,
) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nx-nubo-lb: 1\r\n",
        reason(status),
        message.len() + 1
    );
    if retry_after {
        out.extend_from_slice(b"retry-after: 1\r\n");
    }
    end_own_head(out, keep_alive, minor);
    out.extend_from_slice(message.as_bytes());
    out.push(b'\n');
}

/// The request target of a request head as [`parse_request`] wrote it for the member (its
/// first line's second word).
pub fn target(head: &[u8]) -> &[u8] {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    line.split(|&b| b == b' ').nth(1).unwrap_or(b"/")
}

/// The load balancer's redirect of a plain HTTP request to HTTPS: `308 Permanent Redirect` (the
/// method and body are kept) to `https://<host><target>`, the target taken from `head` (as
/// [`parse_request`] wrote it); `host` is the request's `Host` value, port included (the proxy
/// port serves both).
pub fn redirect_https(out: &mut Vec<u8>, host: &[u8], head: &[u8], keep_alive: bool, minor: u8) {
    let mut target = target(head);
    // An absolute-form target keeps only its path.
    if let Some(rest) = target.strip_prefix(b"http://") {
        target = rest
            .iter()
            .position(|&b| b == b'/')
            .map_or(b"/", |i| &rest[i..]);
    }
    if !target.starts_with(b"/") {
        target = b"/";
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 308 Permanent Redirect\r\nlocation: https://");
    out.extend_from_slice(host);
    out.extend_from_slice(target);
    out.extend_from_slice(b"\r\ncontent-length: 0\r\nx-nubo-lb: 1\r\n");
    end_own_head(out, keep_alive, minor);
}

/// Ends the head of an answer of the load balancer's own: the connection's fate where the
/// client's version does not imply it, and the blank line.
fn end_own_head(out: &mut Vec<u8>, keep_alive: bool, minor: u8) {
    if !keep_alive && minor >= 1 {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep_alive && minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const FWD: Forwarded<'static> = Forwarded {
        peer_ip: b"10.0.0.9",
        port: b"8280",
        secure: false,
    };

    fn request(raw: &str) -> (RequestHead, String) {
        let mut out = Vec::new();
        let head = parse_request(raw.as_bytes(), FWD, &mut out)
            .expect("valid")
            .expect("complete");
        (head, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn a_client_s_claim_of_a_tenant_is_not_passed_on() {
        let raw =
            "GET / HTTP/1.1\r\nHost: a.example\r\nX-Tenant-Domain: b.com\r\nx-tenant-id: 7\r\n\r\n";
        let (_, out) = request(raw);
        assert!(!out.to_ascii_lowercase().contains("x-tenant"), "{out}");
    }

    #[test]
    fn a_request_goes_on_in_origin_form_with_forwarding_headers_and_without_hop_by_hop_ones() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: App.Web.localhost:8280\r\nConnection: keep-alive, x-secret\r\nKeep-Alive: timeout=5\r\nx-secret: 1\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nNEXT";
        let (head, out) = request(raw);
        assert_eq!(head.head_len, raw.len() - 4);
        assert_eq!(&raw[head.host.clone()], "App.Web.localhost:8280");
        assert_eq!(head.framing, Framing::None);
        assert!(head.keep_alive && head.idempotent && !head.upgrade && !head.head_method);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: App.Web.localhost:8280\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: App.Web.localhost:8280\r\nX-Forwarded-Port: 8280\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_becomes_origin_form_and_gives_the_host() {
        let raw = "GET http://a.b.localhost/x HTTP/1.0\r\n\r\n";
        let (head, out) = request(raw);
        assert_eq!(&raw[head.host.clone()], "a.b.localhost");
        assert!(out.starts_with("GET /x HTTP/1.1\r\nHost: a.b.localhost\r\n"));
        assert!(!head.keep_alive, "HTTP/1.0 closes unless asked");
        let (head, _) = request("GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n");
        assert!(head.keep_alive);
        // A Connection option may not remove what routes or frames the message.
        for listed in ["host", "Content-Length", "transfer-encoding"] {
            let raw = format!(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: keep-alive, {listed}\r\n\r\nhello"
            );
            let mut out = Vec::new();
            assert_eq!(
                parse_request(raw.as_bytes(), FWD, &mut out),
                Err(HeadError::Malformed(
                    "Connection names a header the message needs end to end"
                )),
                "{listed}"
            );
        }
        // HTTP/1.0 without Host: the member gets HTTP/1.1 with an empty Host, as 1.1 requires.
        let (head, out) = request("GET /x HTTP/1.0\r\nAccept: */*\r\n\r\n");
        assert!(head.host.is_empty());
        assert!(
            out.starts_with("GET /x HTTP/1.1\r\nAccept: */*\r\nHost: \r\n"),
            "{out}"
        );
    }

    #[test]
    fn bodies_and_upgrades_are_recognised() {
        let (head, out) =
            request("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.idempotent);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        let (head, _) = request("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(12));
        let (head, out) = request(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(head.upgrade);
        assert!(
            out.contains("Upgrade: websocket\r\n") && out.ends_with("Connection: upgrade\r\n\r\n")
        );
        let (head, out) = request("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n");
        assert!(!head.upgrade && !out.contains("h2c"), "{out}");
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let mut out = Vec::new();
        let bad = |raw: &str, out: &mut Vec<u8>| parse_request(raw.as_bytes(), FWD, out).err();
        assert_eq!(
            bad("GET / HTTP/1.1\r\n\r\n", &mut out),
            Some(HeadError::Malformed("missing Host header"))
        );
        assert!(matches!(
            bad(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                &mut out
            ),
            Some(HeadError::Malformed(_))
        ));
        assert!(matches!(
            bad(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &mut out
            ),
            Some(HeadError::Malformed(_))
        ));
        assert!(matches!(
            bad(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
                &mut out
            ),
            Some(HeadError::Unsupported(_))
        ));
        assert!(matches!(
            bad("NOT HTTP\r\n\r\n", &mut out),
            Some(HeadError::Malformed(_))
        ));
        let huge = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(bad(&huge, &mut out), Some(HeadError::TooLarge));
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n", FWD, &mut out),
            Ok(None)
        );
    }

    fn response(raw: &str, req: &str) -> (ResponseHead, String) {
        let (req, _) = request(req);
        let mut out = Vec::new();
        let head = parse_response(raw.as_bytes(), &req, &mut out)
            .expect("valid")
            .expect("complete");
        (head, String::from_utf8(out).expect("utf-8"))
    }

    const GET11: &str = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn most_responses_pass_untouched() {
        let (h, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", GET11);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.upstream_keep && h.client_keep && !h.rewritten);
        assert!(out.is_empty());
        let (h, _) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::None);
        let (h, _) = response("HTTP/1.1 204 No Content\r\n\r\n", GET11);
        assert_eq!(h.framing, Framing::None);
        let (h, _) = response("HTTP/1.1 100 Continue\r\n\r\n", GET11);
        assert!(h.interim);
    }

    #[test]
    fn responses_are_rewritten_only_when_they_must_change() {
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
            GET11,
        );
        assert!(h.rewritten && h.client_keep);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        // Delimited by close: the member's connection cannot be kept, nor the client's.
        let (h, out) = response("HTTP/1.0 200 OK\r\n\r\nbody", GET11);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.upstream_keep && !h.client_keep);
        assert_eq!(out, "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n");
        // An HTTP/1.0 client gets the data of a chunked body, then the connection closes.
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
        );
        assert!(h.dechunk && !h.client_keep && h.upstream_keep);
        assert_eq!(out, "HTTP/1.1 200 OK\r\n\r\n");
        // An HTTP/1.0 client that asked to keep the connection is told it is kept.
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
        );
        assert!(h.client_keep);
        assert!(out.ends_with("Connection: keep-alive\r\n\r\n"));
        // A member closing its side: passed on as-is, and the member's connection is dropped.
        let (h, _) = response(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            GET11,
        );
        assert!(!h.upstream_keep && h.client_keep);
    }

    #[test]
    fn switching_protocols_only_answers_an_upgrade() {
        let mut out = Vec::new();
        let (req, _) = request(GET11);
        assert!(
            parse_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &req, &mut out).is_err()
        );
        let (h, _) = response(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(h.switching && !h.rewritten);
    }

    fn walk(body: &[u8], step: usize) -> (usize, Vec<u8>, bool) {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        for part in body.chunks(step) {
            let n = c
                .advance(part, |d| data.extend_from_slice(d))
                .expect("valid");
            used += n;
            if c.done() {
                break;
            }
        }
        (used, data, c.done())
    }

    #[test]
    fn a_chunked_body_is_walked_to_its_end_in_any_pieces() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, 100] {
            let (used, data, done) = walk(body, step);
            assert!(done, "step {step}");
            assert_eq!(used, body.len() - "GET /next".len(), "step {step}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
        }
        let (used, data, done) = walk(b"0\r\n\r\n", 1);
        assert!(done && data.is_empty() && used == 5);
        let (_, _, done) = walk(b"5\r\nhel", 100);
        assert!(!done);
    }

    #[test]
    fn a_malformed_chunked_body_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            let mut c = Chunked::default();
            assert!(
                c.advance(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn answers_say_what_happened() {
        let mut out = Vec::new();
        answer(&mut out, 503, "no member", true, false, 1);
        let s = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            s,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 10\r\nx-nubo-lb: 1\r\nretry-after: 1\r\nconnection: close\r\n\r\nno member\n"
        );
    }
}
