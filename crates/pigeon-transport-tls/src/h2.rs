//! The HTTP/2 of a tunnel leg (RFC 9113), sans-IO.
//!
//! A leg is one HTTP/2 connection carrying one request whose body is the client→server half of
//! the tunnel and whose response body is the other half: stream 1, a `POST` to `<path>/<token>`.
//! This module frames and parses that connection for both ends: settings, flow control in both
//! directions, pings, resets and goaways, and the request and response header blocks (HPACK
//! through `loona-hpack`). It handles only what a leg needs; everything else a browser or
//! scanner sends to the server is answered by the cover site, never by this code (see
//! `crate::front`). It is also small on purpose: an idle server leg keeps a few counters.
//!
//! [`Leg::receive`] takes bytes and reports [`Event`]s, writing any control frames owed (SETTINGS
//! and PING acknowledgements, WINDOW_UPDATEs) to an output buffer; [`Leg::send_data`] frames
//! outgoing data within the peer's windows. No clock, no IO.

/// The client connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// The stream every leg uses.
pub(crate) const STREAM: u32 = 1;
/// The largest frame this end accepts (the protocol default; no leg asks for more).
pub(crate) const MAX_FRAME: usize = 16_384;
/// The default initial window (RFC 9113 section 6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;
/// The largest window (2^31 − 1).
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Largest header block accepted (HEADERS plus CONTINUATION).
pub(crate) const MAX_HEADER_BLOCK: usize = 16 * 1024;

/// Frame types.
pub(crate) mod kind {
    pub(crate) const DATA: u8 = 0;
    pub(crate) const HEADERS: u8 = 1;
    pub(crate) const PRIORITY: u8 = 2;
    pub(crate) const RST_STREAM: u8 = 3;
    pub(crate) const SETTINGS: u8 = 4;
    pub(crate) const PUSH_PROMISE: u8 = 5;
    pub(crate) const PING: u8 = 6;
    pub(crate) const GOAWAY: u8 = 7;
    pub(crate) const WINDOW_UPDATE: u8 = 8;
    pub(crate) const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub(crate) mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const PADDED: u8 = 0x8;
    pub(crate) const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers used here.
pub(crate) mod setting {
    pub(crate) const HEADER_TABLE_SIZE: u16 = 1;
    pub(crate) const ENABLE_PUSH: u16 = 2;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 4;
    pub(crate) const MAX_FRAME_SIZE: u16 = 5;
    pub(crate) const MAX_HEADER_LIST_SIZE: u16 = 6;
}

/// Error codes (RFC 9113 section 7).
pub(crate) mod code {
    pub(crate) const NO_ERROR: u32 = 0;
}

/// Why an HTTP/2 connection was given up. Each ends the leg.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum H2Error {
    /// The peer broke the protocol.
    #[error("HTTP/2 protocol error: {0}")]
    Protocol(&'static str),
    /// A frame larger than allowed.
    #[error("an HTTP/2 frame of {0} bytes, larger than allowed")]
    FrameSize(usize),
    /// The peer sent more than its window allowed, or a window overflowed.
    #[error("HTTP/2 flow control error: {0}")]
    FlowControl(&'static str),
    /// A header block that does not decode.
    #[error("an HTTP/2 header block that does not decode ({0})")]
    Hpack(String),
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) len: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
}

/// A parsed frame: its header, its payload, and the bytes it took.
pub(crate) type Frame<'a> = (FrameHeader, &'a [u8], usize);

/// Parses the frame at the start of `buf`: `Ok(None)` until it is whole.
///
/// # Errors
/// [`H2Error::FrameSize`] for a frame longer than `max_len`.
pub(crate) fn parse_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame<'_>>, H2Error> {
    let Some(head) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    if len > max_len {
        return Err(H2Error::FrameSize(len));
    }
    let header = FrameHeader {
        len,
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
    };
    let used = FRAME_HEADER_LEN + len;
    match buf.get(FRAME_HEADER_LEN..used) {
        Some(payload) => Ok(Some((header, payload, used))),
        None => Ok(None),
    }
}

/// Appends a frame to `out`. `payload` must be at most 2^24 − 1 bytes.
pub(crate) fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&frame_header(payload.len(), kind, flags, stream));
    out.extend_from_slice(payload);
}

/// The header of a frame whose payload is `len` bytes (at most 2^24 − 1).
fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; FRAME_HEADER_LEN] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    let stream = (stream & 0x7fff_ffff).to_be_bytes();
    [
        len[1], len[2], len[3], kind, flags, stream[0], stream[1], stream[2], stream[3],
    ]
}

/// A SETTINGS frame with `params` in the order given.
pub(crate) fn write_settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    let mut payload = Vec::with_capacity(params.len() * 6);
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    write_frame(out, kind::SETTINGS, 0, 0, &payload);
}

/// A WINDOW_UPDATE frame.
pub(crate) fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_frame(
        out,
        kind::WINDOW_UPDATE,
        0,
        stream,
        &(increment & 0x7fff_ffff).to_be_bytes(),
    );
}

/// A GOAWAY frame.
pub(crate) fn write_goaway(out: &mut Vec<u8>, last_stream: u32, error: u32) {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&last_stream.to_be_bytes());
    payload[4..].copy_from_slice(&error.to_be_bytes());
    write_frame(out, kind::GOAWAY, 0, 0, &payload);
}

/// The priority a HEADERS frame carries (RFC 9113 section 6.2, deprecated but still sent by
/// Chrome): exclusive flag, the stream depended on, and the weight (1–256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Priority {
    pub(crate) exclusive: bool,
    pub(crate) depends_on: u32,
    pub(crate) weight: u16,
}

/// Appends a HEADERS frame (split into CONTINUATION frames past [`MAX_FRAME`]) for `block`.
pub(crate) fn write_headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    priority: Option<Priority>,
    end_stream: bool,
) {
    let mut first = Vec::with_capacity(block.len().min(MAX_FRAME) + 5);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if let Some(p) = priority {
        flags |= flag::PRIORITY;
        let dep = p.depends_on & 0x7fff_ffff | if p.exclusive { 0x8000_0000 } else { 0 };
        first.extend_from_slice(&dep.to_be_bytes());
        first.push(u8::try_from(p.weight.clamp(1, 256) - 1).unwrap_or(u8::MAX));
    }
    let room = MAX_FRAME - first.len();
    let (head, mut rest) = block.split_at(block.len().min(room));
    first.extend_from_slice(head);
    if rest.is_empty() {
        flags |= flag::END_HEADERS;
    }
    write_frame(out, kind::HEADERS, flags, stream, &first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let flags = if rest.is_empty() {
            flag::END_HEADERS
        } else {
            0
        };
        write_frame(out, kind::CONTINUATION, flags, stream, chunk);
    }
}

/// What [`Leg::receive`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// Tunnel bytes from the peer.
    Data(&'a [u8]),
    /// A complete header block on the leg's stream (the request, the response, or trailers).
    Headers { block: Vec<u8>, end_stream: bool },
    /// The peer will send nothing more on the stream.
    End,
    /// The peer reset the stream.
    Reset(u32),
    /// The peer is closing the connection.
    GoAway(u32),
    /// The peer acknowledged one of our pings.
    PingAck([u8; 8]),
}

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// The HTTP/2 state of one leg: flow-control windows both ways and the stream's ends.
#[derive(Debug)]
pub(crate) struct Leg {
    role: Role,
    /// What the peer lets us send, on the connection and on the stream.
    send_conn: i64,
    send_stream: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    peer_initial: i64,
    peer_max_frame: u32,
    /// Our windows for what the peer sends, and what it sent that we have not credited yet.
    recv_conn: i64,
    recv_stream: i64,
    recv_conn_max: u32,
    recv_stream_max: u32,
    /// A header block being assembled from CONTINUATION frames: its stream, the fragments so
    /// far, and whether it ends the stream.
    /// (Boxed: rare, and kept in every idle leg otherwise.)
    partial_headers: Option<Box<(u32, Vec<u8>, bool)>>,
    local_ended: bool,
    remote_ended: bool,
}

impl Leg {
    /// A leg's HTTP/2 state before any frame was exchanged. `recv_stream_max` is the
    /// SETTINGS_INITIAL_WINDOW_SIZE this end announces (or the default, 65,535, if it announces
    /// none), and `recv_conn_max` the connection window it opens with WINDOW_UPDATE.
    pub(crate) fn new(role: Role, recv_stream_max: u32, recv_conn_max: u32) -> Self {
        Self {
            role,
            send_conn: DEFAULT_WINDOW,
            send_stream: DEFAULT_WINDOW,
            peer_initial: DEFAULT_WINDOW,
            peer_max_frame: 16_384,
            recv_conn: i64::from(recv_conn_max),
            recv_stream: i64::from(recv_stream_max),
            recv_conn_max,
            recv_stream_max,
            partial_headers: None,
            local_ended: false,
            remote_ended: false,
        }
    }

    /// Whether the peer ended its side of the stream.
    pub(crate) fn remote_ended(&self) -> bool {
        self.remote_ended
    }

    /// Whether this end ended its side of the stream.
    pub(crate) fn local_ended(&self) -> bool {
        self.local_ended
    }

    /// Bytes that may be sent now.
    pub(crate) fn send_window(&self) -> usize {
        usize::try_from(self.send_conn.min(self.send_stream).max(0)).unwrap_or(0)
    }

    /// Frames as much of `data` as the windows allow into DATA frames of at most `max_payload`
    /// bytes appended to `out`, and returns how much it framed.
    pub(crate) fn send_data(
        &mut self,
        data: &[u8],
        max_payload: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        let sent: Result<usize, std::convert::Infallible> =
            self.send_data_with(data, max_payload, |head, payload| {
                out.extend_from_slice(head);
                out.extend_from_slice(payload);
                Ok(())
            });
        sent.unwrap_or_else(|never| match never {})
    }

    /// [`Leg::send_data`], handing each frame's header and payload to `emit` (which can seal
    /// them into a record without copying them into a buffer first). The windows are charged
    /// for all of it before `emit` runs; an error from it ends the leg.
    pub(crate) fn send_data_with<E>(
        &mut self,
        data: &[u8],
        max_payload: usize,
        mut emit: impl FnMut(&[u8; FRAME_HEADER_LEN], &[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        if self.local_ended {
            return Ok(0);
        }
        let allowed = data.len().min(self.send_window());
        let max_frame = usize::try_from(self.peer_max_frame)
            .unwrap_or(MAX_FRAME)
            .min(max_payload.clamp(1, MAX_FRAME));
        let n = i64::try_from(allowed).unwrap_or(i64::MAX);
        self.send_conn -= n;
        self.send_stream -= n;
        for chunk in data[..allowed].chunks(max_frame) {
            emit(&frame_header(chunk.len(), kind::DATA, 0, STREAM), chunk)?;
        }
        Ok(allowed)
    }

    /// Ends this side of the stream with an empty DATA frame carrying END_STREAM.
    pub(crate) fn end(&mut self, out: &mut Vec<u8>) {
        if !self.local_ended {
            self.local_ended = true;
            write_frame(out, kind::DATA, flag::END_STREAM, STREAM, &[]);
        }
    }

    /// A PING carrying `data`.
    pub(crate) fn ping(out: &mut Vec<u8>, data: [u8; 8]) {
        write_frame(out, kind::PING, 0, 0, &data);
    }

    /// Handles the whole frames at the start of `buf`, calling `on` for each event and writing
    /// owed control frames to `out`. Returns the bytes consumed; an incomplete frame at the end
    /// is left for the next call.
    ///
    /// # Errors
    /// An [`H2Error`] when the peer broke the protocol; the leg must then end.
    pub(crate) fn receive(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<usize, H2Error> {
        let mut used = 0;
        while let Some((header, payload, n)) = parse_frame(&buf[used..], MAX_FRAME)? {
            used += n;
            self.frame(header, payload, out, on)?;
        }
        Ok(used)
    }

    fn frame(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), H2Error> {
        if self.partial_headers.is_some() && h.kind != kind::CONTINUATION {
            return Err(H2Error::Protocol("a header block was interrupted"));
        }
        match h.kind {
            kind::DATA => self.data(h, payload, out, on),
            kind::HEADERS => self.headers(h, payload, on),
            kind::CONTINUATION => {
                let Some((stream, mut block, end_stream)) = self.partial_headers.take().map(|b| *b)
                else {
                    return Err(H2Error::Protocol("CONTINUATION without HEADERS"));
                };
                if h.stream != stream {
                    return Err(H2Error::Protocol("CONTINUATION on another stream"));
                }
                if block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(H2Error::Protocol("header block too large"));
                }
                block.extend_from_slice(payload);
                if h.flags & flag::END_HEADERS != 0 {
                    self.header_block(h.stream, block, end_stream, on)
                } else {
                    self.partial_headers = Some(Box::new((h.stream, block, end_stream)));
                    Ok(())
                }
            }
            kind::PRIORITY => {
                if payload.len() != 5 {
                    return Err(H2Error::FrameSize(payload.len()));
                }
                if h.stream == 0 {
                    return Err(H2Error::Protocol("PRIORITY on stream 0"));
                }
                Ok(())
            }
            kind::RST_STREAM => {
                let code = exact_u32(payload)?;
                if h.stream == 0 {
                    return Err(H2Error::Protocol("RST_STREAM on stream 0"));
                }
                if h.stream == STREAM {
                    self.remote_ended = true;
                    on(Event::Reset(code));
                }
                Ok(())
            }
            kind::SETTINGS => self.settings(h, payload, out),
            kind::PUSH_PROMISE => Err(H2Error::Protocol("PUSH_PROMISE on a leg")),
            kind::PING => {
                let data: [u8; 8] = payload
                    .try_into()
                    .map_err(|_| H2Error::FrameSize(payload.len()))?;
                if h.stream != 0 {
                    return Err(H2Error::Protocol("PING on a stream"));
                }
                if h.flags & flag::ACK != 0 {
                    on(Event::PingAck(data));
                } else {
                    write_frame(out, kind::PING, flag::ACK, 0, &data);
                }
                Ok(())
            }
            kind::GOAWAY => {
                // The last stream, the error code, and any debug data.
                let code = payload
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or(H2Error::FrameSize(payload.len()))?;
                if h.stream != 0 {
                    return Err(H2Error::Protocol("GOAWAY on a stream"));
                }
                on(Event::GoAway(code));
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = exact_u32(payload)? & 0x7fff_ffff;
                if inc == 0 {
                    return Err(H2Error::Protocol("a WINDOW_UPDATE of 0"));
                }
                let window = match h.stream {
                    0 => &mut self.send_conn,
                    STREAM => &mut self.send_stream,
                    _ => return Ok(()),
                };
                *window += i64::from(inc);
                if *window > MAX_WINDOW {
                    return Err(H2Error::FlowControl("a window grew past 2^31 - 1"));
                }
                Ok(())
            }
            // Unknown frame types are ignored (RFC 9113 section 4.1).
            _ => Ok(()),
        }
    }

    fn data(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), H2Error> {
        if h.stream != STREAM {
            return Err(H2Error::Protocol("DATA on a stream that is not open"));
        }
        if self.remote_ended {
            return Err(H2Error::Protocol("DATA after the stream ended"));
        }
        let flow = i64::try_from(h.len).unwrap_or(i64::MAX);
        self.recv_conn -= flow;
        self.recv_stream -= flow;
        if self.recv_conn < 0 || self.recv_stream < 0 {
            return Err(H2Error::FlowControl("the peer sent more than its window"));
        }
        let data = strip_padding(h.flags, payload)?;
        if !data.is_empty() {
            on(Event::Data(data));
        }
        // Credit the windows back once half is used: what arrives is handed on at once.
        // Never a WINDOW_UPDATE of 0 (a protocol error for the peer): with a window of 0 or 1,
        // half of it is 0.
        let conn_used = i64::from(self.recv_conn_max) - self.recv_conn;
        if conn_used > 0 && conn_used >= i64::from(self.recv_conn_max / 2) {
            write_window_update(out, 0, u32::try_from(conn_used).unwrap_or(0));
            self.recv_conn += conn_used;
        }
        if h.flags & flag::END_STREAM != 0 {
            self.remote_ended = true;
            on(Event::End);
        } else {
            let stream_used = i64::from(self.recv_stream_max) - self.recv_stream;
            if stream_used > 0 && stream_used >= i64::from(self.recv_stream_max / 2) {
                write_window_update(out, STREAM, u32::try_from(stream_used).unwrap_or(0));
                self.recv_stream += stream_used;
            }
        }
        Ok(())
    }

    fn headers(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), H2Error> {
        let mut rest = strip_padding(h.flags, payload)?;
        if h.flags & flag::PRIORITY != 0 {
            rest = rest
                .get(5..)
                .ok_or(H2Error::Protocol("HEADERS too short for its priority"))?;
        }
        let end_stream = h.flags & flag::END_STREAM != 0;
        if h.flags & flag::END_HEADERS != 0 {
            self.header_block(h.stream, rest.to_vec(), end_stream, on)
        } else {
            if rest.len() > MAX_HEADER_BLOCK {
                return Err(H2Error::Protocol("header block too large"));
            }
            self.partial_headers = Some(Box::new((h.stream, rest.to_vec(), end_stream)));
            Ok(())
        }
    }

    fn header_block(
        &mut self,
        stream: u32,
        block: Vec<u8>,
        end_stream: bool,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), H2Error> {
        match (stream, self.role) {
            (STREAM, _) => {}
            (0, _) => return Err(H2Error::Protocol("HEADERS on stream 0")),
            // A server opens no streams when push is off.
            (_, Role::Client) => {
                return Err(H2Error::Protocol(
                    "HEADERS on a stream the client did not open",
                ));
            }
            // A server leg refuses other requests (its client never makes any).
            (_, Role::Server) => return Ok(()),
        }
        if self.remote_ended {
            // Closed (remote) or reset: a stream error (STREAM_CLOSED) that ends the leg.
            return Err(H2Error::Protocol("HEADERS after the stream ended"));
        }
        on(Event::Headers { block, end_stream });
        if end_stream {
            self.remote_ended = true;
            on(Event::End);
        }
        Ok(())
    }

    fn settings(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), H2Error> {
        if h.stream != 0 {
            return Err(H2Error::Protocol("SETTINGS on a stream"));
        }
        if h.flags & flag::ACK != 0 {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(H2Error::FrameSize(payload.len()))
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err(H2Error::FrameSize(payload.len()));
        }
        for param in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([param[0], param[1]]);
            let value = u32::from_be_bytes([param[2], param[3], param[4], param[5]]);
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(H2Error::FlowControl("an initial window past 2^31 - 1"));
                    }
                    self.send_stream += value - self.peer_initial;
                    self.peer_initial = value;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(H2Error::Protocol("a MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value;
                }
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(H2Error::Protocol("ENABLE_PUSH other than 0 or 1"));
                }
                _ => {}
            }
        }
        write_frame(out, kind::SETTINGS, flag::ACK, 0, &[]);
        Ok(())
    }
}

/// The payload of a frame that holds exactly one 32-bit field (RST_STREAM, WINDOW_UPDATE).
fn exact_u32(payload: &[u8]) -> Result<u32, H2Error> {
    let b: [u8; 4] = payload
        .try_into()
        .map_err(|_| H2Error::FrameSize(payload.len()))?;
    Ok(u32::from_be_bytes(b))
}

fn strip_padding(flags: u8, payload: &[u8]) -> Result<&[u8], H2Error> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(H2Error::Protocol("a padded frame with no pad length"))?;
    let pad = usize::from(pad);
    if pad > rest.len() {
        return Err(H2Error::Protocol("padding longer than the frame"));
    }
    Ok(&rest[..rest.len() - pad])
}

/// Encodes a header list with HPACK (static and dynamic table indexing, no Huffman coding).
pub(crate) fn encode_headers(
    encoder: &mut loona_hpack::Encoder<'_>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    encoder.encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

/// Most Huffman-coded strings a header block may hold. `loona-hpack` builds its Huffman table
/// afresh for each such string (tens of microseconds), so a 16 KiB block of one-byte strings,
/// which anyone can send the front before it knows what a connection is, would take a quarter
/// of a second to decode. A browser's request or a server's response holds a few dozen.
const MAX_HUFFMAN_STRINGS: usize = 128;

/// Decodes a header block into (name, value) pairs, each at most `MAX_HEADER_BLOCK` in all.
///
/// # Errors
/// [`H2Error::Hpack`] when the block does not decode, or holds more than
/// [`MAX_HUFFMAN_STRINGS`] Huffman-coded strings.
pub(crate) fn decode_headers(
    decoder: &mut loona_hpack::Decoder<'_>,
    block: &[u8],
) -> Result<Vec<(String, String)>, H2Error> {
    if huffman_strings(block) > MAX_HUFFMAN_STRINGS {
        return Err(H2Error::Hpack(format!(
            "more than {MAX_HUFFMAN_STRINGS} Huffman-coded strings"
        )));
    }
    let mut out = Vec::new();
    let mut total = 0usize;
    decoder
        .decode_with_cb(block, |name, value| {
            total += name.len() + value.len() + 32;
            if total <= 4 * MAX_HEADER_BLOCK {
                out.push((
                    String::from_utf8_lossy(&name).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                ));
            }
        })
        .map_err(|e| H2Error::Hpack(format!("{e:?}")))?;
    if total > 4 * MAX_HEADER_BLOCK {
        return Err(H2Error::Hpack("header list too large".into()));
    }
    Ok(out)
}

/// Counts the Huffman-coded strings in a header block without decoding it (RFC 7541 section
/// 6), up to where the block stops making sense; decoding then says what is wrong.
fn huffman_strings(block: &[u8]) -> usize {
    let mut at = 0;
    let mut count = 0;
    while let Some(&first) = block.get(at) {
        // The representation: how many bits its index or size takes in the first byte, and
        // whether a literal name follows (index 0).
        let (prefix, literal) = match first {
            0x80..=0xff => (7, None),
            0x40..=0x7f => (6, Some(first & 0x3f == 0)),
            0x20..=0x3f => (5, None),
            _ => (4, Some(first & 0x0f == 0)),
        };
        let Some((_, next)) = hpack_integer(block, at, prefix) else {
            break;
        };
        at = next;
        let strings = match literal {
            None => 0,
            Some(true) => 2,
            Some(false) => 1,
        };
        for _ in 0..strings {
            let Some(&head) = block.get(at) else {
                return count;
            };
            if head & 0x80 != 0 {
                count += 1;
            }
            let Some((len, next)) = hpack_integer(block, at, 7) else {
                return count;
            };
            at = next.saturating_add(len);
        }
    }
    count
}

/// The HPACK integer (RFC 7541 section 5.1) with a `prefix`-bit prefix at `block[at]`, and
/// where it ends; `None` if it is cut short or longer than four continuation bytes (as
/// `loona-hpack` refuses).
fn hpack_integer(block: &[u8], at: usize, prefix: u32) -> Option<(usize, usize)> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(at)?) & max;
    let mut at = at + 1;
    if value < max {
        return Some((value, at));
    }
    for shift in [0, 7, 14, 21] {
        let byte = *block.get(at)?;
        at += 1;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

/// A new HPACK decoder that refuses dynamic tables larger than the default 4,096 bytes.
pub(crate) fn decoder() -> loona_hpack::Decoder<'static> {
    let mut d = loona_hpack::Decoder::new();
    d.set_max_allowed_table_size(4096);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(leg: &mut Leg, bytes: &[u8], out: &mut Vec<u8>) -> (usize, Vec<String>) {
        let mut seen = Vec::new();
        let used = leg
            .receive(bytes, out, &mut |e| seen.push(format!("{e:?}")))
            .expect("receive");
        (used, seen)
    }

    #[test]
    fn settings_pings_and_windows() {
        let mut leg = Leg::new(Role::Client, 6 << 20, 15 << 20);
        let mut wire = Vec::new();
        write_settings(
            &mut wire,
            &[
                (setting::MAX_CONCURRENT_STREAMS, 128),
                (setting::INITIAL_WINDOW_SIZE, 65_536),
                (setting::MAX_FRAME_SIZE, 16_777_215),
            ],
        );
        write_window_update(&mut wire, 0, 1_000_000);
        write_frame(&mut wire, kind::PING, 0, 0, &[1; 8]);
        write_frame(&mut wire, kind::PING, flag::ACK, 0, &[2; 8]);
        write_frame(&mut wire, 0x10, 0, 0, b"unknown frame types are ignored");
        let mut out = Vec::new();
        let (used, seen) = events(&mut leg, &wire, &mut out);
        assert_eq!(used, wire.len());
        assert_eq!(seen, vec![format!("{:?}", Event::PingAck([2; 8]))]);
        // A SETTINGS ack and a PING ack were owed.
        let mut acks = Vec::new();
        write_frame(&mut acks, kind::SETTINGS, flag::ACK, 0, &[]);
        write_frame(&mut acks, kind::PING, flag::ACK, 0, &[1; 8]);
        assert_eq!(out, acks);
        assert_eq!(leg.send_window(), 65_536);
        // Frames are cut at 16 KiB whatever the peer allows, and the windows are respected.
        let mut out = Vec::new();
        let sent = leg.send_data(&[7; 70_000], MAX_FRAME, &mut out);
        assert_eq!(sent, 65_536);
        assert_eq!(out.len(), 65_536 + 4 * FRAME_HEADER_LEN);
        assert_eq!(leg.send_data(&[7; 10], MAX_FRAME, &mut Vec::new()), 0);
    }

    #[test]
    fn data_is_credited_back_and_overruns_are_refused() {
        let mut leg = Leg::new(Role::Server, 100_000, 100_000);
        let mut wire = Vec::new();
        for _ in 0..4 {
            write_frame(&mut wire, kind::DATA, 0, STREAM, &[1; 16_384]);
        }
        let mut out = Vec::new();
        let (_, seen) = events(&mut leg, &wire, &mut out);
        assert_eq!(seen.len(), 4);
        // 65,536 received of 100,000: both windows were credited back once, past half.
        let mut want = Vec::new();
        write_window_update(&mut want, 0, 65_536);
        write_window_update(&mut want, STREAM, 65_536);
        assert_eq!(out, want);
        let mut leg = Leg::new(Role::Server, 1000, 1000);
        let mut wire = Vec::new();
        write_frame(&mut wire, kind::DATA, 0, STREAM, &[1; 1001]);
        assert!(matches!(
            leg.receive(&wire, &mut Vec::new(), &mut |_| {}),
            Err(H2Error::FlowControl(_))
        ));
    }

    #[test]
    fn headers_with_priority_padding_and_continuation() {
        // Past one frame with the priority fields, within the largest block accepted.
        let block: Vec<u8> = (0..16_384u32).map(|i| (i % 200) as u8).collect();
        let mut wire = Vec::new();
        write_headers(
            &mut wire,
            STREAM,
            &block,
            Some(Priority {
                exclusive: true,
                depends_on: 0,
                weight: 256,
            }),
            false,
        );
        write_frame(
            &mut wire,
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            STREAM,
            &[2, b'h', b'i', 0, 0],
        );
        let mut leg = Leg::new(Role::Server, 65_535, 65_535);
        let mut got = Vec::new();
        leg.receive(&wire, &mut Vec::new(), &mut |e| match e {
            Event::Headers { block, end_stream } => got.push((block, end_stream)),
            Event::Data(d) => got.push((d.to_vec(), false)),
            Event::End => got.push((b"END".to_vec(), true)),
            other => panic!("{other:?}"),
        })
        .expect("receive");
        assert_eq!(got[0], (block, false));
        assert_eq!(got[1], (b"hi".to_vec(), false));
        assert_eq!(got[2], (b"END".to_vec(), true));
        assert!(leg.remote_ended());
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            // SETTINGS of 5 bytes.
            {
                let mut w = Vec::new();
                write_frame(&mut w, kind::SETTINGS, 0, 0, &[0; 5]);
                w
            },
            // A padded DATA frame whose padding is longer than it.
            {
                let mut w = Vec::new();
                write_frame(&mut w, kind::DATA, flag::PADDED, STREAM, &[9, 1]);
                w
            },
            // WINDOW_UPDATE of zero.
            {
                let mut w = Vec::new();
                write_window_update(&mut w, 0, 0);
                w
            },
            // A frame longer than allowed.
            vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1],
            // CONTINUATION out of the blue.
            {
                let mut w = Vec::new();
                write_frame(&mut w, kind::CONTINUATION, flag::END_HEADERS, STREAM, &[1]);
                w
            },
            // PUSH_PROMISE.
            {
                let mut w = Vec::new();
                write_frame(&mut w, kind::PUSH_PROMISE, 0, STREAM, &[0; 8]);
                w
            },
        ];
        for case in cases {
            let mut leg = Leg::new(Role::Client, 65_535, 65_535);
            assert!(
                leg.receive(&case, &mut Vec::new(), &mut |_| {}).is_err(),
                "{case:?}"
            );
        }
        // Truncated frames wait for more bytes.
        let mut leg = Leg::new(Role::Client, 65_535, 65_535);
        let (used, _) = events(&mut leg, &[0, 0, 8, 6, 0, 0, 0, 0], &mut Vec::new());
        assert_eq!(used, 0);
    }

    /// Regression, found with the `tls_h2` fuzz harness (its event-order check): a HEADERS
    /// frame after the stream ended or was reset was reported as another header block and
    /// another end, which a client leg takes as a second answer and a second end of its
    /// download. RFC 9113 section 5.1 makes it an error.
    #[test]
    fn headers_after_the_stream_ended_are_refused() {
        let mut ended = Vec::new();
        write_frame(
            &mut ended,
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            STREAM,
            &[0x88],
        );
        let mut reset = Vec::new();
        write_frame(&mut reset, kind::RST_STREAM, 0, STREAM, &[0, 0, 0, 8]);
        for (first, events) in [
            (
                ended.clone(),
                vec!["Headers { block: [136], end_stream: true }", "End"],
            ),
            (reset, vec!["Reset(8)"]),
        ] {
            for role in [Role::Client, Role::Server] {
                let mut wire = first.clone();
                write_headers(&mut wire, STREAM, &[0x88], None, true);
                let mut leg = Leg::new(role, 65_535, 65_535);
                let mut seen = Vec::new();
                let result = leg.receive(&wire, &mut Vec::new(), &mut |e| {
                    seen.push(format!("{e:?}"));
                });
                assert_eq!(
                    result,
                    Err(H2Error::Protocol("HEADERS after the stream ended"))
                );
                assert_eq!(seen, events);
            }
        }
    }

    /// Regression, found with the `tls_h2` fuzz harness (its control-frame check): with a
    /// window of 0 or 1, an empty DATA frame was answered with a WINDOW_UPDATE of 0, which
    /// the peer must treat as a protocol error (RFC 9113 section 6.9).
    #[test]
    fn empty_data_in_a_tiny_window_credits_nothing() {
        for (stream_max, conn_max) in [(0, 65_535), (1, 65_535), (65_535, 0), (65_535, 1)] {
            let mut leg = Leg::new(Role::Server, stream_max, conn_max);
            let mut wire = Vec::new();
            write_frame(&mut wire, kind::DATA, 0, STREAM, &[]);
            write_frame(&mut wire, kind::DATA, 0, STREAM, &[]);
            let mut out = Vec::new();
            let (used, seen) = events(&mut leg, &wire, &mut out);
            assert_eq!((used, seen.len()), (wire.len(), 0));
            assert!(out.is_empty(), "{stream_max}/{conn_max}: {out:?}");
        }
    }

    /// Frames that RFC 9113 makes connection errors, which a leg used to let through: a
    /// CONTINUATION on another stream than its HEADERS, RST_STREAM and WINDOW_UPDATE of the
    /// wrong length, HEADERS, PRIORITY and RST_STREAM on stream 0, GOAWAY on a stream, and
    /// (to a client, with push off) HEADERS on a stream it did not open.
    #[test]
    fn frames_on_the_wrong_stream_or_of_the_wrong_size_are_refused() {
        let frame = |k: u8, flags: u8, stream: u32, payload: &[u8]| {
            let mut w = Vec::new();
            write_frame(&mut w, k, flags, stream, payload);
            w
        };
        let mut split = frame(kind::HEADERS, 0, STREAM, &[0x82]);
        split.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 3, &[0x84]));
        let mut split3 = frame(kind::HEADERS, 0, 3, &[0x82]);
        split3.extend(frame(
            kind::CONTINUATION,
            flag::END_HEADERS,
            STREAM,
            &[0x84],
        ));
        let cases: Vec<(Vec<u8>, H2Error)> = vec![
            (split, H2Error::Protocol("CONTINUATION on another stream")),
            (split3, H2Error::Protocol("CONTINUATION on another stream")),
            (
                frame(kind::RST_STREAM, 0, STREAM, &[0; 5]),
                H2Error::FrameSize(5),
            ),
            (
                frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0, 0]),
                H2Error::FrameSize(5),
            ),
            (
                frame(kind::HEADERS, flag::END_HEADERS, 0, &[0x82]),
                H2Error::Protocol("HEADERS on stream 0"),
            ),
            (
                frame(kind::PRIORITY, 0, 0, &[0, 0, 0, 1, 16]),
                H2Error::Protocol("PRIORITY on stream 0"),
            ),
            (
                frame(kind::RST_STREAM, 0, 0, &[0; 4]),
                H2Error::Protocol("RST_STREAM on stream 0"),
            ),
            (
                frame(kind::GOAWAY, 0, STREAM, &[0; 8]),
                H2Error::Protocol("GOAWAY on a stream"),
            ),
        ];
        for (wire, want) in cases {
            for role in [Role::Client, Role::Server] {
                let mut leg = Leg::new(role, 65_535, 65_535);
                assert_eq!(
                    leg.receive(&wire, &mut Vec::new(), &mut |_| {}),
                    Err(want.clone()),
                    "{role:?} {wire:?}"
                );
            }
        }
        // HEADERS on another stream: a server leg ignores the request; a client leg, to which
        // no server may open a stream, refuses it.
        let other = frame(kind::HEADERS, flag::END_HEADERS, 2, &[0x88]);
        let mut server = Leg::new(Role::Server, 65_535, 65_535);
        assert_eq!(
            server.receive(&other, &mut Vec::new(), &mut |_| {}),
            Ok(other.len())
        );
        let mut client = Leg::new(Role::Client, 65_535, 65_535);
        assert_eq!(
            client.receive(&other, &mut Vec::new(), &mut |_| {}),
            Err(H2Error::Protocol(
                "HEADERS on a stream the client did not open"
            ))
        );
    }

    #[test]
    fn hpack_round_trip() {
        let mut enc = loona_hpack::Encoder::new();
        let mut dec = decoder();
        let headers = [
            (":method", "POST"),
            (":authority", "cover.test"),
            (":scheme", "https"),
            (":path", "/a/b"),
            ("user-agent", "x"),
        ];
        for _ in 0..2 {
            let block = encode_headers(&mut enc, &headers);
            let got = decode_headers(&mut dec, &block).expect("decode");
            let want: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(got, want);
        }
        assert!(decode_headers(&mut dec, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    /// Regression, found profiling the `tls_h2` fuzz target: `loona-hpack` builds a Huffman
    /// table for every Huffman-coded string, so a 16 KiB block of 3,276 fields with one-byte
    /// Huffman names and values took about 0.25 s of CPU to decode, and the front decodes the
    /// first request of any connection. Such a block is now refused before decoding.
    #[test]
    fn blocks_of_many_huffman_strings_are_refused_unread() {
        // A literal field without indexing: a new name and a value, each one Huffman-coded
        // byte ("0": code 00000, padded with ones).
        let field = [0x00, 0x81, 0x07, 0x81, 0x07];
        let block: Vec<u8> = field.iter().copied().cycle().take(16_380).collect();
        assert_eq!(huffman_strings(&block), 6552);
        assert_eq!(
            decode_headers(&mut decoder(), &block),
            Err(H2Error::Hpack("more than 128 Huffman-coded strings".into()))
        );
        // A block at the limit still decodes, Huffman and all.
        let at_limit = &block[..64 * field.len()];
        let headers = decode_headers(&mut decoder(), at_limit).expect("decodes");
        assert_eq!(headers.len(), 64);
        assert_eq!(headers[0], ("0".to_owned(), "0".to_owned()));
        // The count follows every representation: indexed, with and without a literal name,
        // long integers, a size update.
        let mixed = [
            0x82, // indexed
            0x41, 0x81, 0x07, // incremental indexing, indexed name, Huffman value
            0x40, 0x01, b'a', 0x81, 0x07, // incremental indexing, literal name
            0x3f, 0xe1, 0x1f, // size update to 4,096
            0x1f, 0x10, 0x81, 0x07, // never indexed, name index 31 in two bytes
            0x00, 0x81, 0x07, 0x01, b'b', // without indexing, Huffman name, plain value
        ];
        assert_eq!(huffman_strings(&mixed), 4);
        assert!(decode_headers(&mut decoder(), &mixed).is_ok());
    }
}
