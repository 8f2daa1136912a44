//! What a relay reads requests from and writes answers to: [`ServerStream`].
//!
//! A relay keeps tens of thousands of mostly idle connections, so it does not hold read buffers
//! while a connection is idle: it waits for readiness ([`ServerStream::poll_read_ready`]) and
//! only then reads what is there ([`ServerStream::try_read_buf`]) into a buffer it allocates for
//! the occasion. Plain TCP is the simplest implementation; disguised transports implement it over
//! whatever they unwrap (the `tls` transport: TLS records, HTTP/2 frames, and connections that
//! follow one another).

use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A byte stream a relay serves.
pub trait ServerStream: Send + Unpin + 'static {
    /// Resolves when a read may make progress (or the stream has failed). May wake spuriously:
    /// [`ServerStream::try_read_buf`] then says `WouldBlock`.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Appends what can be read now to `buf`, without waiting. `Ok(0)` at the end of the
    /// stream; an error of kind `WouldBlock` when nothing is there yet.
    fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;

    /// Writes all of `data`.
    fn write_all<'a>(
        &'a mut self,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
}

impl ServerStream for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    fn write_all<'a>(
        &'a mut self,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        AsyncWriteExt::write_all(self, data)
    }
}
