//! Fuzz target `topics`: PubSub topic patterns and the names derived from
//! (namespace, topic). Input: a line of space-separated patterns, then
//! topics one per line. The pattern trie must find exactly the patterns
//! whose own `matches` says yes, before and after removals, and the broker
//! names of two different valid (namespace, topic) pairs must differ.

use prism::backends::{
    kafka_ns_prefix, ns_token,
    pubsub::{check_topic, TopicPattern, Trie},
};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let patterns: Vec<TopicPattern> = lines
        .next()
        .unwrap_or("")
        .split(' ')
        .filter_map(|p| TopicPattern::parse(p).ok())
        .collect();
    let topics: Vec<&str> = lines.filter(|t| check_topic(t).is_ok()).collect();

    let mut trie = Trie::default();
    for (i, p) in patterns.iter().enumerate() {
        trie.insert(p, i as u64, i);
    }
    let agree = |trie: &Trie<usize>, live: &dyn Fn(usize) -> bool| {
        for topic in &topics {
            let mut found = trie.matching(topic);
            found.sort_unstable();
            let expected: Vec<usize> = (0..patterns.len())
                .filter(|&i| live(i) && patterns[i].matches(topic))
                .collect();
            assert_eq!(found, expected, "topic `{topic}`");
        }
    };
    agree(&trie, &|_| true);
    for (i, p) in patterns.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        assert_eq!(trie.remove(p, i as u64), Some(i));
    }
    agree(&trie, &|i| i % 2 == 1);
    assert_eq!(trie.len(), patterns.len() / 2);

    // Pairs: the first token of each topic line, taken as a namespace.
    let pairs: Vec<(&str, &str)> = topics
        .iter()
        .filter_map(|t| t.split_once('.'))
        .filter(|(ns, rest)| {
            prism::config::validate::valid_namespace_name(ns) && check_topic(rest).is_ok()
        })
        .collect();
    for (i, a) in pairs.iter().enumerate() {
        for b in &pairs[i + 1..] {
            if a == b {
                continue;
            }
            let dotted = |(ns, topic): (&str, &str)| format!("prism-ps.{}.{topic}", ns_token(ns));
            assert_ne!(dotted(*a), dotted(*b), "{a:?} and {b:?}");
            let kafka = |(ns, topic): (&str, &str)| kafka_ns_prefix("prism-ps", ns) + topic;
            assert_ne!(kafka(*a), kafka(*b), "{a:?} and {b:?}");
        }
    }
}
