use super::*;
use proptest::prelude::*;

fn node() -> impl Strategy<Value = NodeInfo> {
    (".{0,24}", any::<u64>()).prop_map(|(addr, id)| NodeInfo { addr, id })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

fn request() -> impl Strategy<Value = Request> {
    let op = prop_oneof![
        Just(KvOp::Get),
        bytes().prop_map(KvOp::Put),
        Just(KvOp::Delete),
        proptest::option::of(bytes()).prop_map(KvOp::Restore)
    ];
    let record =
        || {
            (".{0,16}", any::<u64>(), proptest::option::of(bytes()))
                .prop_map(|(key, version, value)| Record { key, version, value })
        };
    prop_oneof![
        (".{0,32}", op, any::<u32>(), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(
            |(key, op, hops, addressed, version, deadline_ms)| {
                Request::Kv(KvRequest { key, op, hops, addressed, version, deadline_ms })
            }
        ),
        (any::<u64>(), any::<u32>()).prop_map(|(id, hops)| Request::FindSuccessor { id, hops }),
        Just(Request::Neighbors),
        node().prop_map(|from| Request::Notify { from }),
        (node(), proptest::collection::vec(record(), 0..8), any::<bool>()).prop_map(|(from, records, h)| {
            let kind = if h { MergeKind::Handoff } else { MergeKind::WriteThrough };
            Request::Merge { from, records, kind }
        }),
        (node(), any::<u64>(), any::<u64>(), proptest::collection::vec(record(), 0..8))
            .prop_map(|(from, after, upto, records)| Request::Sync { from, after, upto, records }),
        (node(), proptest::option::of(node())).prop_map(|(from, pred)| Request::HandoffDone { from, pred }),
        (node(), proptest::option::of(node()), node()).prop_map(|(node, pred, succ)| Request::Leaving {
            node,
            pred,
            succ
        }),
        Just(Request::Status),
        any::<bool>().prop_map(|take| Request::Offer { take }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let outcome = prop_oneof![
        bytes().prop_map(KvOutcome::Value),
        Just(KvOutcome::NotFound),
        Just(KvOutcome::Done),
        any::<u32>().prop_map(|n| KvOutcome::Failed(Fault::HopLimit(n))),
        (".{0,20}", ".{0,20}")
            .prop_map(|(addr, reason)| KvOutcome::Failed(Fault::Unavailable { addr, reason })),
        Just(KvOutcome::Failed(Fault::DeadlinePassed)),
    ];
    prop_oneof![
        (outcome, any::<u32>(), ".{0,20}", any::<u64>(), any::<u64>()).prop_map(
            |(outcome, hops, owner, version, owner_id)| Response::Kv(KvReply {
                outcome,
                hops,
                owner,
                version,
                owner_id
            })
        ),
        (node(), any::<u32>()).prop_map(|(node, hops)| Response::Successor { node, hops }),
        (proptest::option::of(node()), proptest::collection::vec(node(), 0..5))
            .prop_map(|(pred, succs)| Response::Neighbors { pred, succs }),
        (node(), proptest::option::of(node()), node(), any::<u64>())
            .prop_map(|(me, pred, succ, keys)| Response::Status(Status { me, pred, succ, keys })),
        Just(Response::Ack),
        (
            proptest::collection::vec(
                (".{0,8}", any::<u64>(), proptest::option::of(bytes()))
                    .prop_map(|(key, version, value)| Record { key, version, value }),
                0..4
            ),
            any::<bool>()
        )
            .prop_map(|(records, complete)| Response::Records { records, complete }),
        Just(Response::Fault(Fault::Busy)),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        prop_assert_eq!(Request::decode(&req.encode()).unwrap(), req);
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        prop_assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
    }

    #[test]
    fn every_truncation_is_an_error(req in request()) {
        let bytes = req.encode();
        for len in 0..bytes.len() {
            prop_assert!(Request::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
    }
}

#[test]
fn trailing_bytes_and_wrong_versions_are_refused() {
    let mut bytes = Request::Neighbors.encode();
    bytes.push(0);
    assert!(matches!(Request::decode(&bytes), Err(Error::Malformed(_))));
    let mut bytes = Request::Neighbors.encode();
    bytes[0] = VERSION + 1;
    assert!(matches!(Request::decode(&bytes), Err(Error::Version(_))));
    assert!(matches!(Request::decode(&[]), Err(Error::Empty)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Golden vectors: if one of these changes, the format changed and `VERSION` must be bumped.
#[test]
fn golden_bytes() {
    let n = NodeInfo { addr: "127.0.0.1:8000".into(), id: 0x0102 };
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (
            Request::Kv(KvRequest {
                key: "k".into(),
                op: KvOp::Put(b"v!".to_vec()),
                hops: 3,
                addressed: true,
                version: 5,
                deadline_ms: 9,
            })
            .encode(),
            "0500016b0102762103010509",
        ),
        (Request::FindSuccessor { id: u64::MAX, hops: 0 }.encode(), "0501ffffffffffffffffff0100"),
        (Request::Notify { from: n.clone() }.encode(), "05030e3132372e302e302e313a383030308202"),
        (
            Request::Merge {
                from: n.clone(),
                records: vec![
                    Record { key: "a".into(), version: 7, value: Some(vec![1, 2]) },
                    Record { key: "b".into(), version: 8, value: None },
                ],
                kind: MergeKind::Handoff,
            }
            .encode(),
            "05040e3132372e302e302e313a38303030820202016107010201020162080001",
        ),
        (
            Response::Kv(KvReply {
                outcome: KvOutcome::Value(b"xy".to_vec()),
                hops: 2,
                owner: "h:1".into(),
                version: 4,
                owner_id: 5,
            })
            .encode(),
            "0500000278790203683a310405",
        ),
        (
            Response::Neighbors { pred: None, succs: vec![n] }.encode(),
            "050200010e3132372e302e302e313a383030308202",
        ),
    ];
    cases.push((Request::Offer { take: true }.encode(), "050901"));
    cases.push((Response::Offer { id: 1, keys: 2, width: 3 }.encode(), "0507010203"));
    for (bytes, expect) in cases {
        assert_eq!(hex(&bytes), expect);
    }
}
