//! The KeyValue acceptance suite: the same checks against every backend that
//! implements each interface (memory, SQLite, Postgres, Redis — real servers
//! on loopback), each in fresh namespaces.

mod common;

use std::collections::BTreeSet;

use common::{
    assert_error,
    kv::{delete_op, dur, ms, put_op, token, Harness, Kv},
    OTHER_KEY,
};
use prism::{
    backends::Interface,
    error::Service,
    proto::keyvalue::v1::{self as pb, precondition::Condition},
    runtime::block_on_multi_thread,
};
use tonic::Code;

const LIMIT: usize = 4 * 1024 * 1024;

#[test]
fn set_get_overwrite_binary_and_empty_values() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueBasic) {
            let kv = h.client(b).await;
            let first = kv.set("greeting", b"hello").await.unwrap();
            assert!(first.version > 0, "{b}");
            let got = kv.get("greeting").await.unwrap();
            assert!(got.found, "{b}");
            assert_eq!(got.value, b"hello", "{b}");
            assert_eq!(
                got.version, first.version,
                "{b}: get returns the set's version"
            );
            assert!(got.ttl.is_none(), "{b}: no expiry unless asked");

            let second = kv.set("greeting", b"bonjour").await.unwrap();
            assert!(second.version > first.version, "{b}: versions grow");
            assert_eq!(kv.value("greeting").await.unwrap(), b"bonjour", "{b}");

            let binary = [0x00, 0x01, 0xFF, 0xFE];
            kv.set("binary", &binary).await.unwrap();
            assert_eq!(
                kv.value("binary").await.unwrap(),
                binary,
                "{b}: bytes round-trip"
            );

            kv.set("empty", b"").await.unwrap();
            let empty = kv.get("empty").await.unwrap();
            assert!(empty.found, "{b}: an empty value is still a value");
            assert!(empty.value.is_empty(), "{b}");

            let missing = kv.get("never-set").await.unwrap();
            assert!(!missing.found && missing.version == 0, "{b}");

            let err = kv.set("", b"x").await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_KEY",
                Service::KeyValue,
            );
        }
        h.stop().await;
    });
}

#[test]
fn values_up_to_the_limit_are_stored_and_one_byte_more_is_refused() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueBasic) {
            let kv = h.client(b).await;
            let at_limit: Vec<u8> = (0..LIMIT).map(|i| (i % 251) as u8).collect();
            kv.set("big", &at_limit)
                .await
                .unwrap_or_else(|e| panic!("{b}: {e:?}"));
            assert_eq!(kv.value("big").await.unwrap(), at_limit, "{b}");

            let over = vec![7u8; LIMIT + 1];
            let err = kv.set("too-big", &over).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "VALUE_TOO_LARGE",
                Service::KeyValue,
            );
            assert!(
                err.message().contains("4194304"),
                "{b}: names the limit: {}",
                err.message()
            );
            assert!(!kv.exists("too-big").await, "{b}: nothing written");
        }
        h.stop().await;
    });
}

#[test]
fn delete_and_exists() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueBasic) {
            let kv = h.client(b).await;
            kv.set("doomed", b"x").await.unwrap();
            assert!(kv.exists("doomed").await, "{b}");
            assert!(
                kv.delete("doomed").await.unwrap().deleted,
                "{b}: existing key"
            );
            assert!(!kv.exists("doomed").await, "{b}");
            assert!(
                !kv.delete("doomed").await.unwrap().deleted,
                "{b}: missing key"
            );
            assert!(kv.value("doomed").await.is_none(), "{b}");
        }
        h.stop().await;
    });
}

#[test]
fn ttl_expiry_persist_and_overwrite_resetting_the_ttl() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueTtl) {
            let kv = h.client(b).await;
            let mut c = kv.client.clone();
            let ttl_of = |key: &str| pb::GetTtlRequest {
                session_token: kv.token.clone(),
                key: key.into(),
            };
            kv.set_ttl("short", b"1", 300).await.unwrap();
            kv.set_ttl("kept", b"2", 300).await.unwrap();
            kv.set_ttl("reset", b"3", 300).await.unwrap();
            kv.set("plain", b"4").await.unwrap();

            let t = c.get_ttl(ttl_of("short")).await.unwrap().into_inner();
            assert!(t.has_ttl, "{b}");
            let left = ms(t.ttl.as_ref().unwrap());
            assert!((0..=300).contains(&left), "{b}: {left}ms left");
            let got = kv.get("short").await.unwrap();
            assert!(got.ttl.is_some(), "{b}: get shows the ttl");
            assert!(
                !c.get_ttl(ttl_of("plain"))
                    .await
                    .unwrap()
                    .into_inner()
                    .has_ttl,
                "{b}"
            );

            // Persist removes the expiry; an overwrite without a ttl too.
            let p = c
                .persist(pb::PersistRequest {
                    session_token: kv.token.clone(),
                    key: "kept".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(p.had_ttl, "{b}");
            kv.set("reset", b"3b").await.unwrap();
            assert!(
                !c.get_ttl(ttl_of("reset"))
                    .await
                    .unwrap()
                    .into_inner()
                    .has_ttl,
                "{b}"
            );

            // Expire on an existing key sets a ttl.
            c.expire(pb::ExpireRequest {
                session_token: kv.token.clone(),
                key: "plain".into(),
                ttl: Some(dur(300)),
            })
            .await
            .unwrap();
            assert!(
                c.get_ttl(ttl_of("plain"))
                    .await
                    .unwrap()
                    .into_inner()
                    .has_ttl,
                "{b}"
            );

            // Wait (bounded) for both expiring keys to go.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            for key in ["short", "plain"] {
                while kv.exists(key).await {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{b}: {key} never expired"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                assert!(
                    kv.value(key).await.is_none(),
                    "{b}: get agrees {key} expired"
                );
            }
            assert_eq!(kv.value("kept").await.unwrap(), b"2", "{b}: persisted");
            assert_eq!(
                kv.value("reset").await.unwrap(),
                b"3b",
                "{b}: overwrite reset the ttl"
            );

            // Missing keys: NOT_FOUND.
            for status in [
                c.expire(pb::ExpireRequest {
                    session_token: kv.token.clone(),
                    key: "short".into(),
                    ttl: Some(dur(1000)),
                })
                .await
                .map(|_| ())
                .unwrap_err(),
                c.persist(pb::PersistRequest {
                    session_token: kv.token.clone(),
                    key: "short".into(),
                })
                .await
                .map(|_| ())
                .unwrap_err(),
                c.get_ttl(ttl_of("never")).await.map(|_| ()).unwrap_err(),
            ] {
                assert_error(&status, Code::NotFound, "KEY_NOT_FOUND", Service::KeyValue);
            }
            let bad = kv
                .set_req(pb::SetRequest {
                    key: "bad-ttl".into(),
                    value: b"x".to_vec(),
                    ttl: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(
                &bad,
                Code::InvalidArgument,
                "INVALID_TTL",
                Service::KeyValue,
            );
        }
        h.stop().await;
    });
}

#[test]
fn scan_by_prefix_with_limit_and_resume() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueScan) {
            let kv = h.client(b).await;
            let expected: BTreeSet<String> = (0..25).map(|i| format!("user/{i:03}")).collect();
            for key in &expected {
                kv.set(key, key.as_bytes()).await.unwrap();
            }
            kv.set("order/1", b"not a user").await.unwrap();
            kv.set("user", b"shorter than the prefix").await.unwrap();

            // Pages of 10: 10, 10, 5; every key exactly once, values intact.
            let mut seen = Vec::new();
            let mut cursor = String::new();
            let mut pages = 0;
            loop {
                let page = kv.scan("user/", 10, &cursor).await;
                pages += 1;
                assert!(page.len() <= 10, "{b}: a page respects the limit");
                for item in &page {
                    assert_eq!(item.value, item.key.as_bytes(), "{b}");
                    assert!(item.version > 0, "{b}");
                    seen.push(item.key.clone());
                }
                if page.len() < 10 {
                    break;
                }
                cursor = page.last().unwrap().cursor.clone();
                assert!(pages < 10, "{b}: scan does not terminate");
            }
            assert_eq!(seen.len(), expected.len(), "{b}: no duplicates: {seen:?}");
            assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected, "{b}");

            let mut keys = kv
                .client
                .clone()
                .scan_keys(pb::ScanKeysRequest {
                    session_token: kv.token.clone(),
                    prefix: "order/".into(),
                    limit: 0,
                    cursor: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            let first = keys.message().await.unwrap().expect("one key");
            assert_eq!(first.key, "order/1", "{b}");
            assert!(keys.message().await.unwrap().is_none(), "{b}");

            let count = kv
                .client
                .clone()
                .count(pb::CountRequest {
                    session_token: kv.token.clone(),
                    prefix: "user/".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .count;
            assert_eq!(count, 25, "{b}");

            let bad = kv
                .client
                .clone()
                .scan(pb::ScanRequest {
                    session_token: kv.token.clone(),
                    prefix: String::new(),
                    limit: 5,
                    cursor: "%%%".into(),
                })
                .await
                .map(|_| ());
            let err = match bad {
                Err(e) => e,
                Ok(()) => {
                    // Errors found while streaming arrive on the stream.
                    let mut s = kv
                        .client
                        .clone()
                        .scan(pb::ScanRequest {
                            session_token: kv.token.clone(),
                            prefix: String::new(),
                            limit: 5,
                            cursor: "%%%".into(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    s.message().await.unwrap_err()
                }
            };
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_CURSOR",
                Service::KeyValue,
            );
        }
        h.stop().await;
    });
}

#[test]
fn batch_round_trip() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueBatch) {
            let kv = h.client(b).await;
            let mut c = kv.client.clone();
            let entries: Vec<pb::Entry> = (0..5)
                .map(|i| pb::Entry {
                    key: format!("b{i}"),
                    value: vec![i as u8; i + 1],
                    ttl: None,
                })
                .collect();
            let set = c
                .batch_set(pb::BatchSetRequest {
                    session_token: kv.token.clone(),
                    entries: entries.clone(),
                    idempotency_token: None,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(set.versions.len(), 5, "{b}");

            let keys: Vec<String> = vec!["b0".into(), "missing".into(), "b4".into()];
            let got = c
                .batch_get(pb::BatchGetRequest {
                    session_token: kv.token.clone(),
                    keys: keys.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.items.len(), 3, "{b}");
            assert!(got.items[0].found && got.items[0].value == vec![0u8], "{b}");
            assert_eq!(got.items[0].version, set.versions[0], "{b}");
            assert!(!got.items[1].found, "{b}");
            assert_eq!(got.items[2].value, vec![4u8; 5], "{b}");

            let deleted = c
                .batch_delete(pb::BatchDeleteRequest {
                    session_token: kv.token.clone(),
                    keys: vec!["b0".into(), "b1".into(), "missing".into()],
                    idempotency_token: None,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(deleted.deleted, 2, "{b}");
            assert!(
                kv.value("b0").await.is_none() && kv.value("b2").await.is_some(),
                "{b}"
            );

            let dup = c
                .batch_get(pb::BatchGetRequest {
                    session_token: kv.token.clone(),
                    keys: vec!["x".into(), "x".into()],
                })
                .await
                .unwrap_err();
            assert_error(
                &dup,
                Code::InvalidArgument,
                "DUPLICATE_KEY",
                Service::KeyValue,
            );
        }
        h.stop().await;
    });
}

#[test]
fn compare_and_swap_success_and_conflict() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueCas) {
            let kv = h.client(b).await;
            let mut c = kv.client.clone();
            let cas = |expected: u64, value: &[u8]| pb::CompareAndSwapRequest {
                session_token: kv.token.clone(),
                key: "counter".into(),
                expected_version: expected,
                value: value.to_vec(),
                ttl: None,
                idempotency_token: None,
            };
            // Version 0 = create only if absent.
            let created = c.compare_and_swap(cas(0, b"1")).await.unwrap().into_inner();
            let again = c.compare_and_swap(cas(0, b"1")).await.unwrap_err();
            assert_error(
                &again,
                Code::Aborted,
                "PRECONDITION_FAILED",
                Service::KeyValue,
            );

            let swapped = c
                .compare_and_swap(cas(created.version, b"2"))
                .await
                .unwrap()
                .into_inner();
            assert!(swapped.version > created.version, "{b}");
            let stale = c
                .compare_and_swap(cas(created.version, b"3"))
                .await
                .unwrap_err();
            assert_error(
                &stale,
                Code::Aborted,
                "PRECONDITION_FAILED",
                Service::KeyValue,
            );
            let info = tonic_types::StatusExt::get_details_error_info(&stale).unwrap();
            assert_eq!(
                info.metadata.get("current_version"),
                Some(&swapped.version.to_string()),
                "{b}: the conflict names the current version"
            );
            assert_eq!(
                kv.value("counter").await.unwrap(),
                b"2",
                "{b}: loser wrote nothing"
            );
        }
        h.stop().await;
    });
}

#[test]
fn transactions_apply_all_or_nothing() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueTransactional) {
            let kv = h.client(b).await;
            let base = kv.set("account/a", b"100").await.unwrap();
            kv.set("account/old", b"x").await.unwrap();

            let done = kv
                .transaction(vec![
                    put_op("account/a", b"90", Some(Condition::Version(base.version))),
                    put_op("account/b", b"10", Some(Condition::Exists(false))),
                    delete_op("account/old"),
                ])
                .await
                .unwrap_or_else(|e| panic!("{b}: {e:?}"));
            assert_eq!(done.results.len(), 3, "{b}");
            assert!(done.results[2].deleted, "{b}");
            assert_eq!(kv.value("account/a").await.unwrap(), b"90", "{b}");
            assert_eq!(kv.value("account/b").await.unwrap(), b"10", "{b}");
            assert!(kv.value("account/old").await.is_none(), "{b}");

            // The last op's precondition fails: nothing of the batch lands.
            let err = kv
                .transaction(vec![
                    put_op("account/a", b"0", None),
                    put_op("account/c", b"new", None),
                    delete_op("account/b"),
                    put_op("account/b", b"x", Some(Condition::Exists(false))),
                ])
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "DUPLICATE_KEY",
                Service::KeyValue,
            );
            let err = kv
                .transaction(vec![
                    put_op("account/a", b"0", None),
                    put_op("account/c", b"new", None),
                    delete_op("account/b"),
                    put_op("account/d", b"x", Some(Condition::Exists(true))),
                ])
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::Aborted,
                "PRECONDITION_FAILED",
                Service::KeyValue,
            );
            assert_eq!(
                kv.value("account/a").await.unwrap(),
                b"90",
                "{b}: untouched"
            );
            assert_eq!(
                kv.value("account/b").await.unwrap(),
                b"10",
                "{b}: untouched"
            );
            assert!(kv.value("account/c").await.is_none(), "{b}: not created");

            // An invalid op (too large) also leaves nothing written.
            let err = kv
                .transaction(vec![
                    put_op("account/e", b"fine", None),
                    put_op("account/f", &vec![0u8; LIMIT + 1], None),
                ])
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "VALUE_TOO_LARGE",
                Service::KeyValue,
            );
            assert!(kv.value("account/e").await.is_none(), "{b}");
        }
        h.stop().await;
    });
}

#[test]
fn idempotent_retries_apply_once() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueBasic) {
            let kv = h.client(b).await;
            let t = token(&format!("retry-{b}"));
            let req = pb::SetRequest {
                key: "once".into(),
                value: b"first".to_vec(),
                idempotency_token: Some(t.clone()),
                ..Default::default()
            };
            let first = kv.set_req(req.clone()).await.unwrap();
            assert!(!first.replayed, "{b}");
            // Someone else writes in between; the retry must not clobber it.
            let other = kv.set("once", b"second").await.unwrap();
            let retry = kv.set_req(req.clone()).await.unwrap();
            assert!(retry.replayed, "{b}: the retry is recognised");
            assert_eq!(
                retry.version, first.version,
                "{b}: the first outcome is returned"
            );
            let now = kv.get("once").await.unwrap();
            assert_eq!(now.value, b"second", "{b}: the retry was not applied again");
            assert_eq!(now.version, other.version, "{b}");

            // The same token with a different request is refused.
            let mut changed = req.clone();
            changed.value = b"different".to_vec();
            let err = kv.set_req(changed).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "IDEMPOTENCY_TOKEN_REUSED",
                Service::KeyValue,
            );

            // A stale token is refused rather than silently applied.
            let mut stale = req.clone();
            stale.idempotency_token = Some(pb::IdempotencyToken {
                id: "old".into(),
                generated_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
            });
            let err = kv.set_req(stale).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "IDEMPOTENCY_TOKEN_EXPIRED",
                Service::KeyValue,
            );

            // Deletes too: a retried delete reports its first outcome.
            let dt = token(&format!("del-{b}"));
            let del = |t: pb::IdempotencyToken| pb::DeleteRequest {
                session_token: kv.token.clone(),
                key: "once".into(),
                idempotency_token: Some(t),
            };
            let mut c = kv.client.clone();
            let d1 = c.delete(del(dt.clone())).await.unwrap().into_inner();
            kv.set("once", b"recreated").await.unwrap();
            let d2 = c.delete(del(dt)).await.unwrap().into_inner();
            assert!(d1.deleted && d2.deleted && d2.replayed, "{b}");
            assert_eq!(kv.value("once").await.unwrap(), b"recreated", "{b}");
        }
        h.stop().await;
    });
}

#[test]
fn namespaces_are_isolated() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueBasic) {
            // `kv<run>` and `kv<run>.o`: one name prefixes the other.
            let mine = h.client(b).await;
            let theirs = h.client_as(OTHER_KEY, &format!("{b}-other")).await;
            // Keys that a join of namespace and key could confuse.
            mine.set(".o:k", b"mine").await.unwrap();
            mine.set("o.k", b"mine").await.unwrap();
            theirs.set("k", b"theirs").await.unwrap();
            assert_eq!(theirs.value("k").await.unwrap(), b"theirs", "{b}");
            assert!(theirs.value(".o:k").await.is_none(), "{b}");
            assert!(mine.value("k").await.is_none(), "{b}");
            for k in [".o:k", "o.k", "k"] {
                let _ = mine.delete(k).await;
                let _ = theirs.delete(k).await;
            }
            mine.set("shared-name", b"mine").await.unwrap();
            assert!(
                theirs.value("shared-name").await.is_none(),
                "{b}: invisible elsewhere"
            );
            theirs.set("shared-name", b"theirs").await.unwrap();
            assert_eq!(mine.value("shared-name").await.unwrap(), b"mine", "{b}");
            assert_eq!(theirs.value("shared-name").await.unwrap(), b"theirs", "{b}");
            assert!(theirs.delete("shared-name").await.unwrap().deleted, "{b}");
            assert_eq!(mine.value("shared-name").await.unwrap(), b"mine", "{b}");
            let scan = theirs.scan("", 100, "").await;
            assert!(
                scan.is_empty(),
                "{b}: scans stay in the namespace: {scan:?}"
            );
        }
        h.stop().await;
    });
}

#[test]
fn concurrent_writers_leave_one_written_value() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        for b in h.backends(Interface::KeyValueBasic) {
            let kv = h.client(b).await;
            let writers: Vec<_> = (0..20)
                .map(|i| {
                    let kv: Kv = kv.clone();
                    tokio::spawn(async move {
                        kv.set("contended", format!("writer-{i}").as_bytes()).await
                    })
                })
                .collect();
            let mut versions = BTreeSet::new();
            for w in writers {
                let r = w.await.unwrap().unwrap_or_else(|e| panic!("{b}: {e:?}"));
                versions.insert(r.version);
            }
            assert_eq!(versions.len(), 20, "{b}: every write got its own version");
            let got = kv.get("contended").await.unwrap();
            let value = String::from_utf8(got.value).unwrap();
            assert!(
                (0..20).any(|i| value == format!("writer-{i}")),
                "{b}: {value:?} is one of the written values"
            );
            assert_eq!(
                got.version,
                *versions.last().unwrap(),
                "{b}: the last write won"
            );
        }
        h.stop().await;
    });
}

#[test]
fn a_session_for_another_pattern_cannot_use_keyvalue() {
    block_on_multi_thread(async {
        let h = Harness::start().await;
        // A queue session on the memory backend must not reach KeyValue.
        let session =
            h.gw.sessions()
                .create_session(common::inline_request(
                    common::TEST_KEY,
                    prism::proto::config::v1::AccessPattern::Queue,
                    "memory",
                ))
                .await
                .unwrap()
                .into_inner();
        let kv = Kv {
            client: common::kv::kv_client(h.gw.channel.clone()),
            token: session.session_token,
            backend: "memory".into(),
        };
        let err = kv.set("k", b"v").await.unwrap_err();
        assert_error(
            &err,
            Code::FailedPrecondition,
            "PATTERN_NOT_IN_SESSION",
            Service::KeyValue,
        );
        let err = Kv {
            token: "prism_bogus".into(),
            ..kv
        }
        .get("k")
        .await
        .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "INVALID_SESSION_TOKEN",
            Service::KeyValue,
        );
        h.stop().await;
    });
}
