//! A Reader request's filter and sort, compiled against the collection's
//! learned schema into the backend's [`Plan`]: only known columns, values
//! typed and bound, bounded in size and depth. The wire types stop here;
//! backends see only plans.

use prost::Message as _;
use prost_types::value::Kind as V;
use sha2::{Digest, Sha256};

use crate::{
    backends::reader::{bad, kind_name, param_for, Cond, Kind, Op, Plan, TableSchema, TextOp},
    error::Error,
    proto::reader::v1 as pb,
};

/// Most nodes a filter may have, and how deep it may nest.
const MAX_FILTER_NODES: usize = 256;
const MAX_FILTER_DEPTH: usize = 16;
/// Values one filter binds, all nodes together: far below what SQLite
/// (32,766) and Postgres (65,535) accept in one statement, with room for
/// the cursor and page bounds.
pub const MAX_FILTER_VALUES: usize = 10_000;

/// Checks a filter against the schema.
pub fn check_filter(schema: &TableSchema, filter: &pb::Filter) -> Result<Cond, Error> {
    let mut budget = Budget::default();
    check_node(schema, filter, 0, &mut budget)
}

/// What a filter has used so far of its limits.
#[derive(Default)]
struct Budget {
    nodes: usize,
    values: usize,
}

impl Budget {
    /// Counts `n` more bound values: FILTER_TOO_COMPLEX past the limit.
    fn bind(&mut self, n: usize) -> Result<(), Error> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_FILTER_VALUES {
            return Err(bad(
                "FILTER_TOO_COMPLEX",
                format!("a filter binds at most {MAX_FILTER_VALUES} values, IN lists included"),
            )
            .with("limit", MAX_FILTER_VALUES.to_string()));
        }
        Ok(())
    }
}

fn check_node(
    schema: &TableSchema,
    filter: &pb::Filter,
    depth: usize,
    budget: &mut Budget,
) -> Result<Cond, Error> {
    budget.nodes += 1;
    if budget.nodes > MAX_FILTER_NODES || depth > MAX_FILTER_DEPTH {
        return Err(bad(
            "FILTER_TOO_COMPLEX",
            format!(
                "filters may have at most {MAX_FILTER_NODES} nodes nested {MAX_FILTER_DEPTH} deep"
            ),
        ));
    }
    use pb::{
        composite_filter::LogicalOperator as L, field_filter::Operator as O, filter::Filter as F,
    };
    match &filter.filter {
        None => Err(bad(
            "INVALID_FILTER",
            "a filter must set `field` or `composite`".into(),
        )),
        Some(F::Composite(c)) => {
            let children = c
                .filters
                .iter()
                .map(|f| check_node(schema, f, depth + 1, budget))
                .collect::<Result<Vec<_>, _>>()?;
            match L::try_from(c.op) {
                Ok(L::And) => Ok(Cond::And(children)),
                Ok(L::Or) => Ok(Cond::Or(children)),
                Ok(L::Not) => {
                    let [only]: [Cond; 1] = children.try_into().map_err(|_| {
                        bad("INVALID_FILTER", "NOT takes exactly one filter".into())
                    })?;
                    Ok(Cond::Not(Box::new(only)))
                }
                _ => Err(bad(
                    "INVALID_FILTER",
                    "a composite filter needs op AND, OR or NOT".into(),
                )),
            }
        }
        Some(F::Field(f)) => {
            let i = schema.column(&f.field)?;
            let c = &schema.columns[i];
            let value = f.value.clone().unwrap_or_default();
            let is_null = matches!(value.kind, Some(V::NullValue(_)) | None);
            let op = O::try_from(f.op).unwrap_or(O::Unspecified);
            let cmp = |budget: &mut Budget, op: Op| -> Result<Cond, Error> {
                budget.bind(1)?;
                Ok(Cond::Cmp(i, op, param_for(c, &value)?))
            };
            match op {
                O::Equals if is_null => Ok(Cond::IsNull(i, true)),
                O::NotEquals if is_null => Ok(Cond::IsNull(i, false)),
                O::Equals => cmp(budget, Op::Eq),
                O::NotEquals => cmp(budget, Op::Ne),
                O::GreaterThan => cmp(budget, Op::Gt),
                O::GreaterThanOrEquals => cmp(budget, Op::Ge),
                O::LessThan => cmp(budget, Op::Lt),
                O::LessThanOrEquals => cmp(budget, Op::Le),
                O::In | O::NotIn => {
                    let Some(V::ListValue(list)) = &value.kind else {
                        return Err(bad(
                            "INVALID_FILTER",
                            format!("IN and NOT_IN on `{}` take a list value", c.name),
                        ));
                    };
                    if list.values.len() > 1000 {
                        return Err(bad(
                            "FILTER_TOO_COMPLEX",
                            "IN lists hold at most 1000 values".into(),
                        ));
                    }
                    budget.bind(list.values.len())?;
                    let params = list
                        .values
                        .iter()
                        .map(|v| param_for(c, v))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Cond::In(i, op == O::In, params))
                }
                O::Contains | O::StartsWith | O::EndsWith => {
                    let (Kind::Text, Some(V::StringValue(s))) = (c.kind, &value.kind) else {
                        return Err(bad(
                            "TYPE_MISMATCH",
                            format!(
                                "CONTAINS, STARTS_WITH and ENDS_WITH take a string and a text \
                                 field; `{}` is {}",
                                c.name,
                                kind_name(c.kind)
                            ),
                        )
                        .with("field", c.name.clone()));
                    };
                    let op = match op {
                        O::Contains => TextOp::Contains,
                        O::StartsWith => TextOp::StartsWith,
                        _ => TextOp::EndsWith,
                    };
                    budget.bind(1)?;
                    Ok(Cond::Text(i, op, s.clone()))
                }
                O::Unspecified => Err(bad(
                    "INVALID_FILTER",
                    format!("the filter on `{}` has no operator", c.name),
                )),
            }
        }
    }
}

/// Builds a plan: projection, filter, and the keyset order.
pub fn plan(
    schema: &TableSchema,
    fields: &[String],
    filter: Option<&pb::Filter>,
    sort: &[pb::Sort],
) -> Result<Plan, Error> {
    let select = if fields.is_empty() {
        (0..schema.columns.len()).collect()
    } else {
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let i = schema.column(f)?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    };
    let filter = filter.map(|f| check_filter(schema, f)).transpose()?;
    let mut order = Vec::with_capacity(sort.len() + 1);
    for s in sort {
        let i = schema.column(&s.field)?;
        let c = &schema.columns[i];
        if c.nullable {
            return Err(bad(
                "UNSORTABLE_FIELD",
                format!(
                    "field `{}` may be null and cannot order pages (keyset paging needs a \
                     total order); sort by NOT NULL fields",
                    c.name
                ),
            )
            .with("field", c.name.clone()));
        }
        if matches!(c.kind, Kind::Json | Kind::Bytes) {
            return Err(bad(
                "UNSORTABLE_FIELD",
                format!(
                    "field `{}` is {} and cannot be sorted",
                    c.name,
                    kind_name(c.kind)
                ),
            ));
        }
        let desc = s.direction == pb::sort::Direction::Desc as i32;
        if order.iter().any(|(j, _)| *j == i) {
            return Err(bad(
                "INVALID_SORT",
                format!("field `{}` is sorted twice", c.name),
            ));
        }
        order.push((i, desc));
    }
    // The id breaks ties, in the last field's direction: one direction
    // throughout lets an index on (fields..., id) serve the whole order.
    if !order.iter().any(|(i, _)| *i == schema.id) {
        let desc = order.last().is_some_and(|(_, d)| *d);
        order.push((schema.id, desc));
    }
    Ok(Plan {
        select,
        filter,
        order,
    })
}

/// A digest of what makes a query: a cursor only continues the same one.
pub fn query_digest(
    ns: &str,
    collection: &str,
    filter: Option<&pb::Filter>,
    sort: &[pb::Sort],
) -> String {
    let mut h = Sha256::new();
    for part in [ns, collection] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    if let Some(f) = filter {
        h.update(f.encode_to_vec());
    }
    h.update([0]);
    for s in sort {
        h.update(s.encode_to_vec());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}
