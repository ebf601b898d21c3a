//! The Rust clients of the echo servers written in C and C++
//! (`examples/c/echo_server.c`, `examples/cpp/asio_server.cpp`): connect with
//! bounded socket calls, exchange a line, expect the server's close_notify.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use openssl::ssl::{Ssl, SslContext, SslStream};

use super::cbuild::valgrind_mode;
use super::read_until_close_notify;

/// Bound of every blocking socket call of the clients (a server under
/// valgrind is slow).
pub fn io_timeout() -> Duration {
    if valgrind_mode() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    }
}

/// A TCP connection with Nagle off and every call bounded by `io_timeout`.
pub fn tcp_connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(io_timeout()))?;
    tcp.set_write_timeout(Some(io_timeout()))?;
    Ok(tcp)
}

/// Our TLS client handshake on `tcp`.
pub fn tls_connect(tcp: TcpStream, ctx: &SslContext) -> Result<SslStream<TcpStream>, String> {
    let ssl = Ssl::new(ctx).map_err(|e| e.to_string())?;
    ssl.connect(tcp).map_err(|e| format!("handshake: {e}"))
}

/// Sends `message` and reads its echo.
pub fn exchange<S: Read + Write>(s: &mut SslStream<S>, message: &str) -> Result<(), String> {
    s.write_all(message.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    expect_echo(s, message)
}

/// Reads the echo of `message`.
pub fn expect_echo<S: Read + Write>(s: &mut SslStream<S>, message: &str) -> Result<(), String> {
    let mut echo = vec![0u8; message.len()];
    s.read_exact(&mut echo)
        .map_err(|e| format!("reading the echo: {e}"))?;
    if echo != message.as_bytes() {
        return Err(format!("echo {:?}", String::from_utf8_lossy(&echo)));
    }
    Ok(())
}

/// The server's close_notify, with nothing before it.
pub fn expect_close_notify(s: &mut SslStream<TcpStream>) -> Result<(), String> {
    match read_until_close_notify(s) {
        Ok(rest) if rest.is_empty() => Ok(()),
        Ok(rest) => Err(format!("{} bytes before close_notify", rest.len())),
        Err(e) => Err(format!("no close_notify: {e}")),
    }
}
