//! Operator choices the decision takes as data: the operation table, how refused reads are
//! answered, and the base URLs that absolute Bundle entry URLs may name.
//!
//! The defaults are the safe reading of SMART/FHIR where they are silent: no operation beyond
//! the built-in `$everything` and `$export` rules, refusals as 403, absolute entry URLs refused.

use crate::scope::Perms;

/// Everything the decision and classification take from configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyOptions {
    /// Operations allowed beyond the built-in ones.
    pub operations: OperationPolicy,
    /// How a refused read, vread or instance history is answered.
    pub read_refusal: ReadRefusal,
    /// Public base URLs (`https://gw.example/fhir`) that absolute Bundle entry URLs may start
    /// with; any other absolute URL is refused.
    pub base_urls: Vec<String>,
    /// How a batch with refused entries is answered (transactions are always all-or-nothing).
    pub batch_refusal: BatchRefusal,
}

/// How a batch with some refused entries is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchRefusal {
    /// The whole batch is refused, naming each refused entry; nothing reaches the upstream.
    #[default]
    WholeBundle,
    /// Only the allowed entries go upstream; each refused one is answered in place in the
    /// batch-response with its own status and OperationOutcome, as FHIR batch semantics have
    /// it.
    PerEntry,
}

/// How a refused read of one resource is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadRefusal {
    /// 403 `forbidden` with the `insufficient_scope` challenge.
    #[default]
    Forbidden,
    /// 404 `not-found`, which does not reveal that the resource exists.
    NotFound,
}

/// The operation table: deny by default, allow what is listed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OperationPolicy {
    /// Allowed operations.
    pub rules: Vec<OperationRule>,
}

/// Where an operation is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationLevel {
    /// `[base]/$op`.
    System,
    /// `[base]/T/$op`.
    Type,
    /// `[base]/T/id/$op`.
    Instance,
}

/// One allowed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRule {
    /// Operation name without `$`.
    pub name: String,
    /// The level it may be invoked at.
    pub level: OperationLevel,
    /// The resource type (type and instance level); `None` = any type.
    pub resource_type: Option<String>,
    /// Letters the grant must hold on that type (on every type at system level).
    pub requires: Perms,
}

impl OperationPolicy {
    /// The rule allowing `$name` at `level` on `resource_type`, if any.
    pub fn find(
        &self,
        name: &str,
        level: OperationLevel,
        resource_type: Option<&str>,
    ) -> Option<&OperationRule> {
        self.rules.iter().find(|r| {
            r.name == name
                && r.level == level
                && (r.resource_type.is_none() || r.resource_type.as_deref() == resource_type)
        })
    }
}
