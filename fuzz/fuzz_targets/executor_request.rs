//! Bytes from the executor's socket: the length-delimited framing, bincode decoding of
//! requests (and of responses, which the API server decodes, also through its zero-copy
//! reader), and the checks the executor's dispatch table runs on each request before it
//! touches anything that needs root.
//!
//! Oracles: no panic; no frame above `MAX_FRAME_LEN`; no allocation above the frame cap
//! (run with `-malloc_limit_mb`); every decoded message encodes back to itself; the
//! zero-copy response reader decodes every frame as the codec does; every refusal fits
//! in one frame.
#![no_main]

use bytes::BytesMut;
use jobworker_executor::config::{Ceilings, Defaults};
use jobworker_executor::engine::check_start;
use jobworker_protocol::observe;
use jobworker_protocol::{
    MAX_CHUNK_LEN, MAX_FRAME_LEN, Request, Response, WireError, codec, validate,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut framing = codec::length_codec();
    let mut buf = BytesMut::from(data);
    loop {
        match framing.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(
                    frame.len() <= MAX_FRAME_LEN,
                    "frame of {} bytes",
                    frame.len()
                );
                handle(&frame);
            }
            // An incomplete frame at the end of the input: the peer hung up mid-frame.
            Ok(None) => {
                let _ = framing.decode_eof(&mut buf);
                return;
            }
            // A length over the cap: the executor closes the connection.
            Err(_) => return,
        }
    }
});

fn handle(frame: &[u8]) {
    if let Ok(request) = codec::decode::<Request>(frame) {
        let again = codec::encode(&request).expect("a decoded request encodes");
        assert_eq!(
            codec::decode::<Request>(&again).ok().as_ref(),
            Some(&request)
        );
        if let Err(e) = dispatch(&request) {
            refusal_fits(e);
        }
    }
    let response = codec::decode::<Response>(frame);
    if let Ok(response) = &response {
        let again = codec::encode(response).expect("a decoded response encodes");
        assert_eq!(
            codec::decode::<Response>(&again).ok().as_ref(),
            Some(response)
        );
    }
    // The API server's zero-copy reader accepts exactly what the codec accepts, with the
    // same result.
    let shared = codec::decode_response(BytesMut::from(frame));
    assert_eq!(shared.as_ref().ok(), response.as_ref().ok());
    assert_eq!(shared.is_ok(), response.is_ok());
}

/// The checks each handler of `server::dispatch` makes before acting, in the same order.
fn dispatch(request: &Request) -> Result<(), WireError> {
    match request {
        Request::Hello { .. } | Request::Ping => Ok(()),
        Request::Start { owner, spec } | Request::Run { owner, spec } => {
            let checked = check_start(owner.clone(), spec.clone(), &ceilings(), &defaults())?;
            let (resolved, effective) = (checked.resolved, checked.effective);
            // A started job never runs above a ceiling, and every limit is filled in.
            let c = ceilings();
            assert!(resolved.cpu_millis >= 1 && resolved.cpu_millis <= c.cpu_millis);
            assert!(resolved.memory_bytes >= 1 && resolved.memory_bytes <= c.memory_bytes);
            assert!(resolved.pids >= 1 && resolved.pids <= c.pids);
            assert_eq!(effective.cpu_millis, Some(resolved.cpu_millis));
            assert_eq!(effective.memory_bytes, Some(resolved.memory_bytes));
            assert_eq!(effective.pids, Some(resolved.pids));
            if let Some(io) = &resolved.io {
                validate::device_path(&io.device).expect("a resolved device is valid");
                for bps in [io.read_bps, io.write_bps].into_iter().flatten() {
                    assert!(bps <= c.io_bps.unwrap_or(u64::MAX));
                }
            }
            Ok(())
        }
        Request::Stop { scope, caller, .. } => {
            validate::scope(scope)?;
            validate::owner(caller)
        }
        Request::Status { scope, .. }
        | Request::Wait { scope, .. }
        | Request::Quota { scope }
        | Request::Output { scope, .. } => validate::scope(scope),
        Request::Exec {
            scope,
            caller,
            spec,
            ..
        } => {
            validate::scope(scope)?;
            validate::owner(caller)?;
            validate::exec_spec(spec)
        }
        // Outside a session: refused. Inside one: a terminal's size is checked, input
        // is bounded.
        Request::Input(b) if b.len() > MAX_CHUNK_LEN => Err(WireError::invalid("input")),
        Request::Input(_) | Request::InputEnd => Ok(()),
        Request::Resize(size) => validate::tty(Some(*size)),
        Request::List {
            scope,
            limit,
            filter,
            ..
        } => {
            validate::scope(scope)?;
            validate::list_limit(*limit)?;
            validate::list_filter(filter)
        }
        Request::Resolve { scope, reference } => {
            validate::scope(scope)?;
            validate::reference(reference)
        }
        Request::Remove { scope, caller, .. } => {
            validate::scope(scope)?;
            validate::owner(caller)
        }
        Request::Report(records) => {
            if records.len() > observe::MAX_API_RECORDS {
                return Err(WireError::invalid("too many records"));
            }
            for r in records {
                observe::check_api_record(r)?;
                // What is accepted is bounded: every string within the field limit.
                if let jobworker_protocol::ApiEvent::Call(c) = &r.event {
                    assert!(c.identity.len() <= observe::MAX_API_FIELD_LEN);
                }
            }
            Ok(())
        }
        Request::Audit(q) => q.owner.as_deref().map_or(Ok(()), validate::owner),
        Request::Events { scope, .. } => validate::scope(scope),
        Request::Usage {
            scope, interval_ms, ..
        } => {
            validate::scope(scope)?;
            if (observe::MIN_USAGE_INTERVAL_MS..=observe::MAX_USAGE_INTERVAL_MS)
                .contains(interval_ms)
            {
                Ok(())
            } else {
                Err(WireError::invalid("interval"))
            }
        }
        Request::Metrics => Ok(()),
    }
}

fn ceilings() -> Ceilings {
    Ceilings {
        cpu_millis: 2000,
        memory_bytes: 1 << 30,
        pids: 1024,
        io_bps: Some(100 << 20),
        io_iops: None,
        tmp_bytes: 1 << 30,
        timeout: std::time::Duration::from_secs(86_400),
    }
}

fn defaults() -> Defaults {
    Defaults {
        tmp_bytes: 64 << 20,
        timeout: std::time::Duration::from_secs(3600),
    }
}

/// The executor answers a refused request with one error frame: it always fits.
fn refusal_fits(e: WireError) {
    let bytes = codec::encode(&Response::Error(e)).expect("an error encodes");
    assert!(bytes.len() <= MAX_FRAME_LEN);
}
