//! Criterion benchmarks of the in-process hot paths every call or message
//! crosses: session token validation (the registry check each data RPC
//! makes), API key and JWT verification (each CreateSession), topic pattern
//! matching (each PubSub publish), and Reader filter compilation (each
//! Read/Query).
//!
//! `cargo bench --bench hot_paths`

use std::{collections::HashMap, hint::black_box, sync::Arc};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use prism::{
    auth::Authenticator,
    backends::{
        pubsub::{TopicPattern, Trie},
        reader::{Column, Kind, TableSchema},
    },
    config::{resolve::NamedConfigs, GatewayConfig, Source},
    proto::reader::v1 as pb,
    session::{token, Clock, SessionEntry, SessionRegistry},
};

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

fn config() -> GatewayConfig {
    let yaml = format!(
        "{}\nauth:\n  jwt:\n    - {{ issuer: bench, audience: prism, algorithm: HS256, secret: {SECRET}, namespace_claim: ns }}\n",
        prism::config::EMBEDDED_DEFAULT
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("config parses")
}

fn token_validation(c: &mut Criterion) {
    let mut cfg = config();
    // Every session below is the one principal's.
    if let Some(ns) = cfg.namespaces.get_mut("default") {
        ns.session.max_sessions_per_principal = ns.session.max_sessions;
    }
    let auth = Authenticator::new(&cfg).unwrap();
    let configs = NamedConfigs::resolve_all(&cfg).unwrap();
    let clock = Clock::new();
    let registry = SessionRegistry::new(clock, cfg.namespaces.iter());
    let namespace = registry.namespace("default").unwrap().clone();
    let principal = auth.api_key("prism-dev-key").unwrap();
    // Sessions beside the one checked, so the lookup is not in a tiny map.
    let mut token_of_last = String::new();
    for i in 0..10_000 {
        let (tok, digest) = token::new_token();
        let entry = SessionEntry::new(
            format!("sess-bench-{i}"),
            digest,
            principal.clone(),
            configs.get("user-profiles").unwrap().clone(),
            "bench".into(),
            String::new(),
            HashMap::new(),
            namespace.clone(),
            clock,
        );
        registry.insert(Arc::new(entry)).unwrap();
        token_of_last = tok;
    }
    c.bench_function("session token check (registry authorize)", |b| {
        b.iter(|| registry.authorize_here(black_box(&token_of_last)).unwrap())
    });
    c.bench_function("session token check, unknown token", |b| {
        b.iter(|| {
            registry
                .authorize_here(black_box("prism_not-a-token"))
                .is_err()
        })
    });
    c.bench_function("api key verification", |b| {
        b.iter(|| auth.api_key(black_box("prism-dev-key")).unwrap())
    });
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let jwt = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"iss": "bench", "aud": "prism", "sub": "alice", "ns": "default", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    c.bench_function("jwt HS256 verification", |b| {
        b.iter(|| auth.jwt(black_box(&jwt)).unwrap())
    });
}

fn topic_matching(c: &mut Criterion) {
    let pattern = TopicPattern::parse("events.*.created.>").unwrap();
    c.bench_function("topic pattern parse", |b| {
        b.iter(|| TopicPattern::parse(black_box("events.*.created.>")).unwrap())
    });
    c.bench_function("topic pattern match", |b| {
        b.iter(|| pattern.matches(black_box("events.user.created.eu.1")))
    });
    // 1,000 subscriptions: literal, one-token and tail wildcards.
    let mut trie = Trie::default();
    for i in 0..1_000u64 {
        let raw = match i % 3 {
            0 => format!("events.svc{i}.created"),
            1 => format!("events.*.svc{i}"),
            _ => format!("events.svc{i}.>"),
        };
        trie.insert(&TopicPattern::parse(&raw).unwrap(), i, i);
    }
    c.bench_function("subscriber lookup among 1,000 patterns", |b| {
        b.iter(|| trie.matching(black_box("events.svc7.created")))
    });
}

fn filter_compilation(c: &mut Criterion) {
    let column = |name: &str, kind| Column {
        name: name.into(),
        kind,
        nullable: false,
    };
    let schema = TableSchema::new(
        "orders",
        "orders",
        "id",
        vec![
            column("id", Kind::Int),
            column("customer", Kind::Text),
            column("status", Kind::Text),
            column("amount", Kind::Float),
            column("created_at", Kind::Timestamp),
        ],
    )
    .unwrap();
    let field =
        |name: &str, op: pb::field_filter::Operator, value: prost_types::Value| pb::Filter {
            filter: Some(pb::filter::Filter::Field(pb::FieldFilter {
                field: name.into(),
                op: op as i32,
                value: Some(value),
            })),
        };
    let text = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.into())),
    };
    let number = |n: f64| prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    };
    use pb::field_filter::Operator as Op;
    let filter = pb::Filter {
        filter: Some(pb::filter::Filter::Composite(pb::CompositeFilter {
            op: pb::composite_filter::LogicalOperator::And as i32,
            filters: vec![
                field("customer", Op::Equals, text("alice")),
                field("amount", Op::GreaterThanOrEquals, number(10.0)),
                field("status", Op::StartsWith, text("pa")),
                field("created_at", Op::LessThan, text("2026-06-01T00:00:00Z")),
            ],
        })),
    };
    let sort = vec![pb::Sort {
        field: "created_at".into(),
        direction: pb::sort::Direction::Desc as i32,
    }];
    c.bench_function("reader filter compilation (4 conditions + sort)", |b| {
        b.iter(|| {
            prism::services::reader::plan::plan(&schema, &[], Some(black_box(&filter)), &sort)
                .unwrap()
        })
    });
}

criterion_group!(
    benches,
    token_validation,
    topic_matching,
    filter_compilation
);
criterion_main!(benches);
