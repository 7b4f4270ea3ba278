//! What a request costs the FHIR server, in rate-limit units.

use fhirgate_policy::request::{FhirRequest, Interaction};

use crate::config::Costs;

/// Bundles are charged entry by entry, up to this many entries' worth.
const MAX_BUNDLE_COST: u32 = 10_000;

/// The cost of `request` under `costs`.
pub fn cost_of(request: &FhirRequest, costs: &Costs) -> u32 {
    use Interaction as I;
    match request.interaction {
        I::Capabilities | I::SmartConfiguration => 0,
        I::Read | I::Vread => costs.read,
        I::SearchType
        | I::SearchSystem
        | I::SearchCompartment
        | I::HistoryInstance
        | I::HistoryType
        | I::HistorySystem
        | I::PageContinuation => search_cost(request, costs),
        I::Create | I::Update | I::Patch | I::Delete => costs.write,
        I::Batch | I::Transaction => request
            .entries
            .iter()
            .map(|entry| cost_of(entry, costs))
            .fold(0u32, u32::saturating_add)
            .clamp(1, MAX_BUNDLE_COST),
        I::Operation => match request.operation.as_deref() {
            Some("export") => costs.export,
            _ => costs.operation,
        },
    }
}

fn search_cost(request: &FhirRequest, costs: &Costs) -> u32 {
    let mut cost = costs.search;
    let includes = request.params.iter().any(|(name, _)| {
        let base = name.split(':').next().unwrap_or(name);
        base == "_include" || base == "_revinclude"
    });
    if includes {
        cost = cost.saturating_add(costs.include);
    }
    let large = request
        .param("_count")
        .and_then(|count| count.parse::<u32>().ok())
        .is_some_and(|count| count > costs.large_count);
    if large {
        cost = cost.saturating_add(costs.large_page);
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirgate_policy::request::{RequestParts, classify};

    fn cost(method: &str, path: &str, query: Option<&str>, body: Option<&str>) -> u32 {
        let request = classify(&RequestParts {
            method,
            path,
            query,
            content_type: body.map(|_| "application/fhir+json"),
            body: body.map(str::as_bytes),
            if_none_exist: None,
        })
        .unwrap();
        cost_of(&request, &Costs::default())
    }

    #[test]
    fn costs_follow_the_load_on_the_server() {
        let read = cost("GET", "Observation/1", None, None);
        let search = cost("GET", "Observation", Some("code=x"), None);
        let include = cost(
            "GET",
            "Observation",
            Some("_include=Observation:subject"),
            None,
        );
        let large = cost("GET", "Observation", Some("_count=1000"), None);
        let write = cost("DELETE", "Observation/1", None, None);
        let export = cost("GET", "$export", None, None);
        assert!(
            read < search && search < include && search < large,
            "{read} {search} {include} {large}"
        );
        assert!(search < write && write < export, "{write} {export}");
        assert_eq!(cost("GET", "metadata", None, None), 0);
        let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[
            {"request":{"method":"GET","url":"Observation/1"}},
            {"request":{"method":"GET","url":"Observation?code=x"}}]}"#;
        assert_eq!(cost("POST", "", None, Some(batch)), read + search);
    }
}
