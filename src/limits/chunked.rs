//! Where a chunked request body ends, found without decoding it.
//!
//! Phase: the connection gate hands Pingora the bytes of one request at a time, so a pipelined
//! request behind this body stays with the gate (and is checked like any other head). Chunk
//! sizes are parsed with `httparse::parse_chunk_size`, as Pingora parses them.
//!
//! Invariant: [`Chunked::scan`] claims bytes up to the end of the body and never past it; a
//! body it cannot follow is an error, and the gate then closes the connection after this
//! request rather than guess where the next one starts.

/// The longest chunk-size line (with extensions) or trailer field line followed.
const MAX_LINE: usize = 4096;
/// The most trailer bytes followed.
const MAX_TRAILERS: usize = 16 * 1024;

/// The body is not valid chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In a chunk-size line (bytes so far are in `line`).
    Size,
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// The CRLF after chunk data: this many bytes left.
    DataEnd(u8),
    /// In the trailer section; `at_line_start` after each line break.
    Trailers {
        at_line_start: bool,
        seen: usize,
    },
    /// The final CRLF of the trailer section was seen after a CR.
    TrailersCr,
    Done,
}

/// The scanner of one chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    line: Vec<u8>,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size,
            line: Vec::new(),
        }
    }
}

impl Chunked {
    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Follow `bytes` (what arrived after the bytes of earlier calls): how many of them belong
    /// to the body; fewer than `bytes.len()` only when the body ended.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<usize, Broken> {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.state {
                State::Done => break,
                State::Size => {
                    let b = bytes[i];
                    i += 1;
                    self.line.push(b);
                    if self.line.len() > MAX_LINE {
                        return Err(Broken);
                    }
                    if b == b'\n' {
                        let size = match httparse::parse_chunk_size(&self.line) {
                            Ok(httparse::Status::Complete((_, size))) => size,
                            _ => return Err(Broken),
                        };
                        self.line.clear();
                        self.state = if size == 0 {
                            State::Trailers {
                                at_line_start: true,
                                seen: 0,
                            }
                        } else {
                            State::Data(size)
                        };
                    }
                }
                State::Data(left) => {
                    let available = (bytes.len() - i) as u64;
                    let take = (*left).min(available);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.state = State::DataEnd(2);
                    }
                }
                State::DataEnd(left) => {
                    let expected = if *left == 2 { b'\r' } else { b'\n' };
                    if bytes[i] != expected {
                        return Err(Broken);
                    }
                    i += 1;
                    *left -= 1;
                    if *left == 0 {
                        self.state = State::Size;
                    }
                }
                State::Trailers {
                    at_line_start,
                    seen,
                } => {
                    let b = bytes[i];
                    i += 1;
                    *seen += 1;
                    if *seen > MAX_TRAILERS {
                        return Err(Broken);
                    }
                    match (b, *at_line_start) {
                        (b'\r', true) => self.state = State::TrailersCr,
                        (b'\n', true) => self.state = State::Done,
                        (b'\n', false) => *at_line_start = true,
                        _ => *at_line_start = false,
                    }
                }
                State::TrailersCr => {
                    if bytes[i] != b'\n' {
                        return Err(Broken);
                    }
                    i += 1;
                    self.state = State::Done;
                }
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte by byte and all at once agree.
    fn claims(body: &[u8]) -> Result<usize, Broken> {
        let whole = Chunked::default().scan(body);
        let mut c = Chunked::default();
        let mut n = 0;
        for b in body {
            n += c.scan(std::slice::from_ref(b))?;
            if c.done() {
                break;
            }
        }
        assert_eq!(whole, Ok(n), "byte by byte");
        whole
    }

    #[test]
    fn ends_exactly_where_the_body_does() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET /next HTTP/1.1\r\n";
        assert_eq!(
            claims(body),
            Ok(body.len() - b"GET /next HTTP/1.1\r\n".len())
        );
        let trailers = b"3\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nrest";
        assert_eq!(claims(trailers), Ok(trailers.len() - 4));
        let mut partial = Chunked::default();
        assert_eq!(partial.scan(b"5\r\nhel"), Ok(6));
        assert!(!partial.done());
        assert_eq!(partial.scan(b"lo\r\n0\r\n\r\n"), Ok(9));
        assert!(partial.done());
    }

    #[test]
    fn broken_framing_is_an_error() {
        assert_eq!(Chunked::default().scan(b"zz\r\n"), Err(Broken));
        assert_eq!(Chunked::default().scan(b"3\r\nabcX\r\n"), Err(Broken));
        let long = [b'1'; MAX_LINE + 1];
        assert_eq!(Chunked::default().scan(&long), Err(Broken));
        assert_eq!(
            Chunked::default().scan(b"ffffffffffffffffffff\r\n"),
            Err(Broken),
            "size overflows"
        );
    }
}
