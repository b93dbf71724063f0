//! Framing and encoding.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of bincode. The
//! length is checked against [`MAX_FRAME_LEN`] before anything is allocated, and the
//! bincode decoder has the same byte limit, so no frame can make either side allocate
//! more than that. Decoding errors surface as `io::ErrorKind::InvalidData`.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::OnceLock;

use bincode::Options;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::error::{ErrorKind, WireError};
use crate::job::Stream;
use crate::message::{MAX_CHUNK_LEN, Request, Response};

/// Version of this protocol. Both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest frame accepted or sent, in bytes (length prefix excluded).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bincode with explicit options: fixed options on both sides, a byte limit equal to the
/// frame limit, trailing bytes rejected.
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_FRAME_LEN as u64)
        .reject_trailing_bytes()
}

/// Encodes one value the way the codec does (used by tests and fuzzing).
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    options().serialize(value).map_err(invalid_data)
}

/// Decodes one frame body the way the codec does (used by tests and fuzzing).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    options().deserialize(bytes).map_err(invalid_data)
}

fn invalid_data(e: bincode::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The tokio-serde format: decodes `In`, encodes `Out`.
pub struct Bincode<In, Out> {
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for Bincode<In, Out> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<In: DeserializeOwned, Out> tokio_serde::Deserializer<In> for Bincode<In, Out> {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> io::Result<In> {
        decode(src)
    }
}

impl<In, Out: Serialize> tokio_serde::Serializer<Out> for Bincode<In, Out> {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &Out) -> io::Result<Bytes> {
        let bytes = encode(item)?;
        if bytes.len() > MAX_FRAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame would exceed the maximum frame length",
            ));
        }
        Ok(Bytes::from(bytes))
    }
}

/// One whole response frame (length prefix and body) as the codec writes it, for a reply
/// sent without a transport: the executor's refusal of a connection over its cap is one
/// such frame, written straight to the socket.
pub fn response_frame(response: &Response) -> io::Result<Vec<u8>> {
    let body = encode(response)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "response frame too long"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The bytes that precede a chunk's data on the wire: the frame's length prefix and the
/// bincode encoding of [`Response::Chunk`] up to its data (the variant, the stream, then
/// the data's length). `chunk_frame_header(stream, n)` followed by `n` bytes of data is
/// exactly the frame the codec writes for a `Response::Chunk` of those bytes, so the
/// executor can send a chunk's data straight from the output file (`sendfile`) instead of
/// copying it into a frame. Both parts come from bincode itself with the codec's options,
/// not restated by hand.
pub fn chunk_frame_header(stream: Stream, len: usize) -> io::Result<Vec<u8>> {
    if len > MAX_CHUNK_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "chunk longer than the maximum chunk length",
        ));
    }
    let mut body = chunk_prefix(stream)?.to_vec();
    body.extend_from_slice(&encode(&(len as u64))?);
    let frame_len = u32::try_from(body.len() + len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "chunk frame length overflows"))?;
    let mut header = Vec::with_capacity(4 + body.len());
    header.extend_from_slice(&frame_len.to_be_bytes());
    header.extend_from_slice(&body);
    Ok(header)
}

/// The encoding of the `Chunk` variant's tag and `stream`: an empty chunk without its
/// (zero) length. Derived from bincode once per stream, then kept.
fn chunk_prefix(stream: Stream) -> io::Result<&'static [u8]> {
    static PREFIXES: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    if let Some(p) = PREFIXES.get() {
        return Ok(&p[stream.index()]);
    }
    let zero = encode(&0u64)?.len();
    let prefix = |s: Stream| -> io::Result<Vec<u8>> {
        let mut p = encode(&Response::Chunk(s, Bytes::new()))?;
        p.truncate(p.len().saturating_sub(zero));
        Ok(p)
    };
    let both = [prefix(Stream::Stdout)?, prefix(Stream::Stderr)?];
    Ok(&PREFIXES.get_or_init(|| both)[stream.index()])
}

/// Decodes one response frame body like the codec does, except that a chunk's data is
/// not copied: the returned `Bytes` shares the frame's buffer. Anything the codec would
/// refuse is refused here too (same limit, no trailing bytes).
pub fn decode_response(mut frame: BytesMut) -> io::Result<Response> {
    for stream in Stream::ALL {
        let prefix = chunk_prefix(stream)?;
        if !frame.starts_with(prefix) {
            continue;
        }
        let mut rest = &frame[prefix.len()..];
        let len: u64 = options()
            .allow_trailing_bytes()
            .deserialize_from(&mut rest)
            .map_err(invalid_data)?;
        if len != rest.len() as u64 {
            // A short chunk is bincode's error to report; a long one its trailing bytes.
            return decode(&frame);
        }
        let header = frame.len() - rest.len();
        let _ = frame.split_to(header);
        return Ok(Response::Chunk(stream, frame.freeze()));
    }
    decode(&frame)
}

/// The length-delimited framing with the explicit maximum.
pub fn length_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// The executor's side of a connection: reads requests, writes responses.
pub type ServerTransport<T> = tokio_serde::Framed<
    Framed<T, LengthDelimitedCodec>,
    Request,
    Response,
    Bincode<Request, Response>,
>;

/// The API server's side of a connection: reads responses, writes requests.
pub type ClientTransport<T> = tokio_serde::Framed<
    Framed<T, LengthDelimitedCodec>,
    Response,
    Request,
    Bincode<Response, Request>,
>;

pub fn server_transport<T: AsyncRead + AsyncWrite>(io: T) -> ServerTransport<T> {
    tokio_serde::Framed::new(Framed::new(io, length_codec()), Bincode::default())
}

pub fn client_transport<T: AsyncRead + AsyncWrite>(io: T) -> ClientTransport<T> {
    tokio_serde::Framed::new(Framed::new(io, length_codec()), Bincode::default())
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection during the handshake")]
    Closed,
    #[error("{0}")]
    Refused(WireError),
    #[error("unexpected {0} frame during the handshake")]
    Unexpected(&'static str),
}

/// Client side of the version handshake: sends `Hello`, expects `Hello` back with the
/// same version. An executor at its connection cap answers with a
/// `ResourceExhausted` error instead, which comes back as [`HandshakeError::Refused`].
pub async fn client_handshake<T>(transport: &mut ClientTransport<T>) -> Result<(), HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let sent = transport
        .send(Request::Hello {
            version: PROTOCOL_VERSION,
        })
        .await;
    if let Err(e) = sent {
        // A refusing executor writes its reason and closes without reading, so our hello
        // can meet a closed socket: the reason, if it arrived, says more than EPIPE.
        return match transport.next().await {
            Some(Ok(Response::Error(refusal))) => Err(HandshakeError::Refused(refusal)),
            _ => Err(e.into()),
        };
    }
    match transport.next().await {
        None => Err(HandshakeError::Closed),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Response::Hello { version })) if version == PROTOCOL_VERSION => Ok(()),
        Some(Ok(Response::Hello { version })) => Err(HandshakeError::Refused(WireError::new(
            ErrorKind::VersionMismatch,
            format!("executor speaks protocol {version}, this side {PROTOCOL_VERSION}"),
        ))),
        Some(Ok(Response::Error(e))) => Err(HandshakeError::Refused(e)),
        Some(Ok(_)) => Err(HandshakeError::Unexpected("non-hello")),
    }
}

/// Server side of the version handshake: expects `Hello` with our version and answers
/// it; anything else is answered with an error (when possible) and fails.
pub async fn server_handshake<T>(transport: &mut ServerTransport<T>) -> Result<(), HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    match transport.next().await {
        None => Err(HandshakeError::Closed),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Request::Hello { version })) if version == PROTOCOL_VERSION => {
            transport
                .send(Response::Hello {
                    version: PROTOCOL_VERSION,
                })
                .await?;
            Ok(())
        }
        Some(Ok(Request::Hello { version })) => {
            let e = WireError::new(
                ErrorKind::VersionMismatch,
                format!("peer speaks protocol {version}, the executor {PROTOCOL_VERSION}"),
            );
            // Best effort: the peer learns why before the connection closes.
            let _ = transport.send(Response::Error(e.clone())).await;
            Err(HandshakeError::Refused(e))
        }
        Some(Ok(other)) => {
            let e = WireError::invalid(format!(
                "expected hello, got {} before the handshake",
                other.name()
            ));
            let _ = transport.send(Response::Error(e)).await;
            Err(HandshakeError::Unexpected(other.name()))
        }
    }
}
