//! Fuzz target `config`: arbitrary text as a configuration file, through
//! `${VAR}` interpolation, YAML parsing and every validation check, the
//! way `prism serve` and `prism validate` read one, and the named configs
//! of one that passes are resolved as at start-up. Nothing may panic,
//! whatever the text.

use prism::config::{validate, GatewayConfig, Source};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = [("PRISM_SQLITE_PATH", "/nonexistent/fuzz.db"), ("EMPTY", "")];
    let Ok(config) = GatewayConfig::from_yaml(text, &Source::Inline, &env) else {
        return;
    };
    let report = validate::validate(&config);
    let _ = (report.text(), report.failures_text());
    if !report.has_failures() {
        let _ = prism::config::resolve::NamedConfigs::resolve_all(&config);
    }
}
