//! Any bytes handed to the node-to-node decoder: an error or a message, never a panic; a
//! decoded message encodes back to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdht::wire::{Message, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        assert_eq!(Request::decode(&req.encode()).unwrap(), req);
    }
    if let Ok(resp) = Response::decode(data) {
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
    }
});
