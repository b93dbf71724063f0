//! The init template's control messages (`jobworker_executor::ipc::control`): the clone
//! request the template decodes, and the replies the executor decodes. The first input
//! byte is the number of descriptors that came with the reply (0-3), the rest the bytes.
//!
//! Oracles: no panic; whatever decodes encodes back to the same bytes.
#![no_main]

use jobworker_executor::ipc::control::{CloneRequest, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = CloneRequest::decode(data) {
        assert_eq!(&r.encode()[..], data);
    }
    let Some((&fds, bytes)) = data.split_first() else {
        return;
    };
    let fds = usize::from(fds % 4);
    if let Ok(reply) = Reply::decode(bytes, fds) {
        let (b, n) = reply.encode();
        assert_eq!(&b[..n], bytes);
        assert_eq!(fds, usize::from(matches!(reply, Reply::Cloned(_))));
    }
});
