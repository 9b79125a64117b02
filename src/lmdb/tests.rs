use super::*;
use proptest::prelude::*;

fn put(id: u64, key: &str, value: &str, version: u64) -> Write {
    Write::Put { id, key: key.into(), value: value.into(), version }
}

fn value_of(s: &Store, id: u64, key: &str) -> Option<Vec<u8>> {
    s.get(id, key.as_bytes()).unwrap().and_then(|r| r.value)
}

#[test]
fn put_get_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.get(1, b"a").unwrap(), None);
    s.apply(&[put(1, "a", "one", 10)]).unwrap();
    assert_eq!(value_of(&s, 1, "a").as_deref(), Some(&b"one"[..]));
    assert_eq!(s.live_keys(), 1);
    let r = s.apply(&[Write::Delete { id: 1, key: "a".into(), version: 5 }]).unwrap();
    // A late delete, older than the stored value: last writer wins, nothing changes.
    assert_eq!(r, vec![Applied::Superseded { current: 10 }]);
    assert_eq!(value_of(&s, 1, "a").as_deref(), Some(&b"one"[..]));
    assert_eq!(s.apply(&[put(1, "a", "late", 9)]).unwrap(), vec![Applied::Superseded { current: 10 }]);
    let r = s.apply(&[Write::Delete { id: 1, key: "a".into(), version: 11 }]).unwrap();
    assert_eq!(r, vec![Applied::Stored { version: 11, existed: true }]);
    assert_eq!(value_of(&s, 1, "a"), None);
    assert_eq!(s.get(1, b"a").unwrap().unwrap().version, 11, "tombstone kept");
    let r = s.apply(&[Write::Delete { id: 1, key: "a".into(), version: 12 }]).unwrap();
    assert_eq!(r, vec![Applied::Unchanged], "nothing live to delete");
    assert_eq!(s.live_keys(), 0);
}

#[test]
fn merge_keeps_the_newest_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.apply(&[put(1, "k", "new", 100)]).unwrap();
    let old = Record { id: 1, key: b"k".to_vec(), version: 50, value: Some(b"old".to_vec()) };
    assert_eq!(s.apply(&[Write::Merge(old)]).unwrap(), vec![Applied::Superseded { current: 100 }]);
    let tomb = Record { id: 1, key: b"k".to_vec(), version: 150, value: None };
    s.apply(&[Write::Merge(tomb)]).unwrap();
    assert_eq!(value_of(&s, 1, "k"), None);
    let stale = Record { id: 1, key: b"k".to_vec(), version: 120, value: Some(b"x".to_vec()) };
    assert_eq!(
        s.apply(&[Write::Merge(stale)]).unwrap(),
        vec![Applied::Superseded { current: 150 }],
        "no resurrection"
    );
}

#[test]
fn remove_spares_a_record_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.apply(&[put(1, "a", "x", 10), put(2, "b", "y", 10)]).unwrap();
    s.apply(&[put(2, "b", "z", 20)]).unwrap();
    let r = s
        .apply(&[
            Write::Remove { id: 1, key: b"a".to_vec(), version: 10 },
            Write::Remove { id: 2, key: b"b".to_vec(), version: 10 },
        ])
        .unwrap();
    assert_eq!(r[1], Applied::Unchanged);
    assert_eq!(s.get(1, b"a").unwrap(), None);
    assert_eq!(value_of(&s, 2, "b").as_deref(), Some(&b"z"[..]));
    assert_eq!(s.live_keys(), 1);
}

fn scan_all(s: &Store, after: u64, upto: u64, batch: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut resume = None;
    loop {
        let scan = s.scan_range(after, upto, resume.as_deref(), batch, usize::MAX).unwrap();
        assert!(scan.records.len() <= batch);
        out.extend(scan.records.iter().map(|r| r.id));
        match scan.next {
            Some(n) => resume = Some(n),
            None => return out,
        }
    }
}

#[test]
fn scan_wraps_around_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let ids = [0, 1, 5, 100, u64::MAX - 1, u64::MAX];
    s.apply(&ids.map(|id| put(id, "k", "v", 1))).unwrap();
    assert_eq!(scan_all(&s, u64::MAX - 2, 1, 1), vec![u64::MAX - 1, u64::MAX, 0, 1]);
    assert_eq!(scan_all(&s, 1, 100, 2), vec![5, 100]);
    assert_eq!(scan_all(&s, u64::MAX, 0, 10), vec![0]);
    assert_eq!(scan_all(&s, 7, 7, 4), ids.to_vec(), "(a, a] is the whole ring");
}

#[test]
fn scan_batches_by_bytes_but_moves_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let big = "x".repeat(1000);
    s.apply(&[put(1, "a", &big, 1), put(2, "b", &big, 1), put(3, "c", &big, 1)]).unwrap();
    let scan = s.scan_range(0, 10, None, 100, 10).unwrap();
    assert_eq!(scan.records.len(), 1);
    assert!(scan.next.is_some());
}

#[test]
fn reopen_keeps_data_and_count() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.apply(&[put(1, "a", "x", 1), put(2, "b", "y", 1)]).unwrap();
        s.apply(&[Write::Delete { id: 2, key: b"b".to_vec(), version: 2 }]).unwrap();
        s.meta_put("succ", b"127.0.0.1:1").unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(value_of(&s, 1, "a").as_deref(), Some(&b"x"[..]));
    assert_eq!(s.live_keys(), 1);
    assert_eq!(s.live_bytes(), 2, "counted again from disk");
    assert_eq!(s.meta_get("succ").unwrap().as_deref(), Some(&b"127.0.0.1:1"[..]));
}

#[test]
fn purge_drops_only_old_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.apply(&[put(1, "a", "x", 1), put(2, "b", "y", 1), put(3, "c", "z", 1)]).unwrap();
    s.apply(&[
        Write::Delete { id: 1, key: b"a".to_vec(), version: 10 },
        Write::Delete { id: 2, key: b"b".to_vec(), version: 30 },
    ])
    .unwrap();
    // "c" was deleted and then written again: its stale tomb entry must not remove the value.
    s.apply(&[Write::Delete { id: 3, key: b"c".to_vec(), version: 11 }]).unwrap();
    s.apply(&[put(3, "c", "again", 12)]).unwrap();
    assert_eq!(s.purge_tombstones(20, 100).unwrap(), 1);
    assert_eq!(s.get(1, b"a").unwrap(), None);
    assert!(s.get(2, b"b").unwrap().is_some(), "young tombstone kept");
    assert_eq!(value_of(&s, 3, "c").as_deref(), Some(&b"again"[..]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A batched scan of (a, b] returns exactly the stored ids in the interval, each once,
    /// in clockwise order from a.
    #[test]
    fn scan_returns_exactly_the_interval(
        ids in proptest::collection::btree_set(any::<u64>(), 0..60),
        a: u64, b: u64, batch in 1usize..7,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let writes: Vec<Write> = ids.iter().map(|&id| put(id, "k", "v", 1)).collect();
        s.apply(&writes).unwrap();
        let mut expect: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&x| a == b || (x.wrapping_sub(a) != 0 && x.wrapping_sub(a) <= b.wrapping_sub(a)))
            .collect();
        if a != b {
            expect.sort_by_key(|x| x.wrapping_sub(a));
        }
        prop_assert_eq!(scan_all(&s, a, b, batch), expect);
    }
}

#[test]
fn clearing_removes_records_and_tombstones_but_keeps_meta() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.apply(&[put(1, "a", "x", 10), put(2, "b", "y", 10)]).unwrap();
    s.apply(&[Write::Delete { id: 2, key: b"b".to_vec(), version: 11 }]).unwrap();
    s.meta_put("successor", b"n1").unwrap();
    s.clear_records().unwrap();
    assert_eq!(s.get(1, b"a").unwrap(), None);
    assert_eq!(s.get(2, b"b").unwrap(), None, "the tombstone is gone too");
    assert_eq!(s.live_keys(), 0);
    assert_eq!(s.meta_get("successor").unwrap().as_deref(), Some(&b"n1"[..]));
}
