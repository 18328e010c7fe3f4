//! The wire contract: every message, field (name, number, label, type) and
//! enum value of the interface spec (seed 002) is exactly what we compile.
//! `tests/fixtures/spec_wire_contract.txt` is extracted from the spec by
//! `scripts/spec_contract.py`; a client generated from the spec alone
//! therefore speaks our wire format.

use std::collections::BTreeSet;

use prost::Message;
use prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, EnumDescriptorProto, FileDescriptorSet,
};

fn type_name(field: &prost_types::FieldDescriptorProto, package: &str, scope: &str) -> String {
    match field.r#type() {
        Type::Message | Type::Enum => {
            let full = field.type_name().trim_start_matches('.');
            let in_scope = format!("{package}.{scope}.");
            let in_package = format!("{package}.");
            full.strip_prefix(&in_scope)
                .or_else(|| full.strip_prefix(&in_package))
                .unwrap_or(full)
                .to_string()
        }
        Type::String => "string".into(),
        Type::Bytes => "bytes".into(),
        Type::Bool => "bool".into(),
        Type::Int32 => "int32".into(),
        Type::Int64 => "int64".into(),
        Type::Uint32 => "uint32".into(),
        Type::Uint64 => "uint64".into(),
        Type::Double => "double".into(),
        Type::Float => "float".into(),
        other => format!("{other:?}"),
    }
}

fn enum_lines(e: &EnumDescriptorProto, prefix: &str, out: &mut BTreeSet<String>) {
    for v in &e.value {
        out.insert(format!(
            "{prefix}.{}.{} = {} enum-value",
            e.name(),
            v.name(),
            v.number()
        ));
    }
}

fn message_lines(
    m: &DescriptorProto,
    package: &str,
    scope: Option<&str>,
    out: &mut BTreeSet<String>,
) {
    let scope = match scope {
        Some(s) => format!("{s}.{}", m.name()),
        None => m.name().to_string(),
    };
    for field in &m.field {
        let map_entry = m.nested_type.iter().find(|n| {
            n.options.as_ref().is_some_and(|o| o.map_entry())
                && field.type_name().ends_with(&format!(".{}", n.name()))
        });
        let (label, ty) =
            if let Some(entry) = map_entry.filter(|_| field.label() == Label::Repeated) {
                let k = type_name(&entry.field[0], package, &scope);
                let v = type_name(&entry.field[1], package, &scope);
                ("singular".to_string(), format!("map<{k},{v}>"))
            } else {
                let label = if field.label() == Label::Repeated {
                    "repeated"
                } else if field.proto3_optional() {
                    "optional"
                } else if field.oneof_index.is_some() {
                    "oneof"
                } else {
                    "singular"
                };
                (label.to_string(), type_name(field, package, &scope))
            };
        out.insert(format!(
            "{package}.{scope}.{} = {} {label} {ty}",
            field.name(),
            field.number()
        ));
    }
    for e in &m.enum_type {
        enum_lines(e, &format!("{package}.{scope}"), out);
    }
    for nested in m
        .nested_type
        .iter()
        .filter(|n| !n.options.as_ref().is_some_and(|o| o.map_entry()))
    {
        message_lines(nested, package, Some(&scope), out);
    }
}

#[test]
fn compiled_protos_match_the_spec_exactly() {
    let spec: BTreeSet<String> = include_str!("fixtures/spec_wire_contract.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(spec.len() > 250, "the spec fixture looks truncated");

    let set = FileDescriptorSet::decode(prism::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut ours = BTreeSet::new();
    for file in &set.file {
        let package = file.package();
        for m in &file.message_type {
            message_lines(m, package, None, &mut ours);
        }
        for e in &file.enum_type {
            enum_lines(e, package, &mut ours);
        }
    }

    let missing: Vec<&String> = spec.difference(&ours).collect();
    assert!(
        missing.is_empty(),
        "fields of the spec that we do not compile as specified:\n{missing:#?}"
    );

    // Nothing extra in the spec's own messages and enums either.
    let owner = |line: &str| {
        line.rsplit_once('.')
            .map(|(m, _)| m.to_string())
            .unwrap_or_default()
    };
    let spec_types: BTreeSet<String> = spec
        .iter()
        .map(|l| owner(l.split(' ').next().unwrap()))
        .collect();
    let extra: Vec<&String> = ours
        .iter()
        .filter(|l| spec_types.contains(&owner(l.split(' ').next().unwrap())))
        .filter(|l| !spec.contains(*l))
        .collect();
    assert!(
        extra.is_empty(),
        "fields we add to the spec's messages:\n{extra:#?}"
    );
}
