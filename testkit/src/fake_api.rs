//! An in-memory Kubernetes API server for tests and the reconcile benchmark: enough of the REST
//! API for what the controller calls (get, list with label selectors, server-side apply, merge
//! patch with resourceVersion preconditions, status subresource, create, delete with
//! finalizers and owner-reference garbage collection), with fault injection.
//!
//! Over 400 lines because it is one server: the routes share the object store and the fault
//! queue, and each verb is a few lines of it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// An injected failure: the next `times` requests matching `method` and `path_contains` get
/// `status`.
#[derive(Clone, Debug)]
struct Fault {
    method: Method,
    path_contains: String,
    status: u16,
    times: u32,
}

/// (collection path such as `/apis/apps/v1/statefulsets`, namespace, name)
type Key = (String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    uid: u64,
    faults: Vec<Fault>,
    requests: Vec<(Method, String)>,
    /// What each field manager last applied of each object's status: its fields, and
    /// `conditions/<type>` for its conditions.
    status_owners: BTreeMap<(Key, String), Vec<String>>,
}

/// The fake server. Clones share state.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

/// A parsed resource path.
struct Target {
    collection: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ns_index = segments.iter().position(|s| *s == "namespaces")?;
    let prefix = segments[..ns_index].join("/");
    let namespace = segments.get(ns_index + 1)?.to_string();
    let resource = segments.get(ns_index + 2)?;
    Some(Target {
        collection: format!("/{prefix}/{resource}"),
        namespace,
        name: segments.get(ns_index + 3).map(|s| s.to_string()),
        subresource: segments.get(ns_index + 4).map(|s| s.to_string()),
    })
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reason_for(code: u16) -> &'static str {
    match code {
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_fields) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        target_fields.remove(key);
                    } else {
                        merge_patch(target_fields.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn labels_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|requirement| match requirement.split_once('=') {
        Some((key, value)) => object["metadata"]["labels"][key].as_str() == Some(value),
        None => true,
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/"))
    })
}

impl FakeApiServer {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A kube client whose requests this server answers.
    pub fn client(&self) -> Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        });
        Client::new(service, "default")
    }

    /// Stores an object as if created by a user; returns it as stored.
    pub fn create<T: Serialize>(&self, collection: &str, object: &T) -> Value {
        let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
        let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let mut state = self.lock();
        stamp_new(&mut state, &mut value, &namespace);
        state.objects.insert((collection.to_owned(), namespace, name), value.clone());
        value
    }

    /// The stored object, decoded.
    pub fn get<T: DeserializeOwned>(&self, collection: &str, namespace: &str, name: &str) -> Option<T> {
        let state = self.lock();
        let value = state.objects.get(&(collection.to_owned(), namespace.to_owned(), name.to_owned()))?;
        serde_json::from_value(value.clone()).ok()
    }

    /// All stored objects of a collection in a namespace.
    pub fn list(&self, collection: &str, namespace: &str) -> Vec<Value> {
        let state = self.lock();
        state
            .objects
            .iter()
            .filter(|((c, ns, _), _)| c == collection && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes a stored object as a user or another controller would (spec edits bump
    /// `metadata.generation`).
    pub fn edit(&self, collection: &str, namespace: &str, name: &str, patch: &Value) {
        let mut state = self.lock();
        state.resource_version += 1;
        let version = state.resource_version;
        if let Some(object) = state.objects.get_mut(&(collection.to_owned(), namespace.to_owned(), name.to_owned())) {
            let spec_before = object["spec"].clone();
            merge_patch(object, patch);
            if object["spec"] != spec_before {
                let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
            object["metadata"]["resourceVersion"] = json!(version.to_string());
        }
    }

    /// Makes the next `times` requests with `method` whose path contains `path_contains` fail
    /// with `status`.
    pub fn fail_next(&self, method: Method, path_contains: &str, status: u16, times: u32) {
        self.lock().faults.push(Fault { method, path_contains: path_contains.to_owned(), status, times });
    }

    /// Every request received, as (method, path and query).
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.lock().requests.clone()
    }

    /// Requests received whose method is `method` and whose path contains `path_contains`.
    pub fn count_requests(&self, method: &Method, path_contains: &str) -> usize {
        self.lock().requests.iter().filter(|(m, p)| m == method && p.contains(path_contains)).count()
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let path = uri.path().to_owned();
        let query = uri.query().unwrap_or_default().to_owned();
        let content_type =
            request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = request.into_body().collect_bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let (code, value) = self.respond(&method, &path, &query, &content_type, &body);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }

    /// Serves the fake over HTTP on `listener` (for a client in another process), until the
    /// process ends.
    pub async fn serve_http(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let server = self.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.map(|b| b.to_vec()).unwrap_or_default();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let query = parts.uri.query().unwrap_or_default();
                let (code, value) = server.respond(&parts.method, parts.uri.path(), query, &content_type, &body);
                let status =
                    axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                (
                    status,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    serde_json::to_vec(&value).unwrap_or_default(),
                )
            }
        });
        axum::serve(listener, app).await
    }

    fn respond(&self, method: &Method, path: &str, query: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut state = self.lock();
        state.requests.push((method.clone(), format!("{path}?{query}")));
        if let Some(fault) =
            state.faults.iter_mut().find(|f| f.times > 0 && f.method == *method && path.contains(&f.path_contains))
        {
            fault.times -= 1;
            let code = fault.status;
            return (code, status_body(code, reason_for(code), "injected fault"));
        }
        let Some(target) = parse_path(path) else {
            return (404, status_body(404, "NotFound", &format!("no such path {path}")));
        };
        let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match (method.clone(), &target.name) {
            (Method::GET, Some(name)) => get_object(&state, &target, name),
            (Method::GET, None) => list_objects(&state, &target, query),
            (Method::POST, None) => create_object(&mut state, &target, patch),
            (Method::PATCH, Some(name)) if content_type.contains("apply-patch") => {
                apply_object(&mut state, &target, name, patch, &field_manager(query))
            }
            (Method::PATCH, Some(name)) => merge_object(&mut state, &target, name, &patch),
            (Method::DELETE, Some(name)) => delete_object(&mut state, &target, name),
            _ => (405, status_body(405, "MethodNotAllowed", "not supported by the fake")),
        }
    }
}

fn stamp_new(state: &mut State, value: &mut Value, namespace: &str) {
    state.resource_version += 1;
    state.uid += 1;
    let metadata = &mut value["metadata"];
    metadata["namespace"] = json!(namespace);
    if metadata["uid"].is_null() {
        metadata["uid"] = json!(format!("uid-{}", state.uid));
    }
    metadata["resourceVersion"] = json!(state.resource_version.to_string());
    metadata["generation"] = json!(1);
    metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
}

fn key_of(target: &Target, name: &str) -> Key {
    (target.collection.clone(), target.namespace.clone(), name.to_owned())
}

fn not_found(target: &Target, name: &str) -> (u16, Value) {
    (404, status_body(404, "NotFound", &format!("{} \"{name}\" not found", target.collection)))
}

fn get_object(state: &State, target: &Target, name: &str) -> (u16, Value) {
    match state.objects.get(&key_of(target, name)) {
        Some(object) => (200, object.clone()),
        None => not_found(target, name),
    }
}

fn list_objects(state: &State, target: &Target, query: &str) -> (u16, Value) {
    let selector = query_param(query, "labelSelector").unwrap_or_default();
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((c, ns, _), v)| *c == target.collection && *ns == target.namespace && labels_match(v, &selector))
        .map(|(_, v)| v.clone())
        .collect();
    (
        200,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
    )
}

fn create_object(state: &mut State, target: &Target, mut object: Value) -> (u16, Value) {
    let name = match object["metadata"]["name"].as_str() {
        Some(name) => name.to_owned(),
        None => format!("{}{}", object["metadata"]["generateName"].as_str().unwrap_or("object-"), state.uid + 1),
    };
    object["metadata"]["name"] = json!(name);
    let key = key_of(target, &name);
    if state.objects.contains_key(&key) {
        return (409, status_body(409, "AlreadyExists", &format!("{name} already exists")));
    }
    stamp_new(state, &mut object, &target.namespace);
    state.objects.insert(key, object.clone());
    (201, object)
}

/// Server-side apply, simplified: the applier owns every field it sends, so those replace
/// what is stored; metadata maps are merged.
fn apply_object(state: &mut State, target: &Target, name: &str, patch: Value, manager: &str) -> (u16, Value) {
    let key = key_of(target, name);
    let Some(existing) = state.objects.get(&key).cloned() else {
        let mut created = patch;
        stamp_new(state, &mut created, &target.namespace);
        state.objects.insert(key, created.clone());
        return (201, created);
    };
    let mut updated = existing.clone();
    if target.subresource.as_deref() == Some("status") {
        let owned = applied_status_paths(&patch["status"]);
        let before = state.status_owners.insert((key.clone(), manager.to_owned()), owned.clone()).unwrap_or_default();
        let dropped: Vec<&String> = before.iter().filter(|path| !owned.contains(path)).collect();
        remove_status_paths(&mut updated["status"], &dropped);
        apply_status_fields(&mut updated["status"], &patch["status"]);
        return store_if_changed(state, key, &existing, updated);
    }
    if let (Some(fields), Some(target_fields)) = (patch.as_object(), updated.as_object_mut()) {
        for (field, value) in fields {
            if field == "metadata" {
                for (meta_key, meta_value) in value.as_object().into_iter().flatten() {
                    target_fields["metadata"][meta_key] = meta_value.clone();
                }
            } else if field != "status" {
                target_fields.insert(field.clone(), value.clone());
            }
        }
    }
    store_if_changed(state, key, &existing, updated)
}

fn field_manager(query: &str) -> String {
    query.split('&').find_map(|pair| pair.strip_prefix("fieldManager=")).unwrap_or_default().to_owned()
}

/// The status paths an apply sets: its fields, and `conditions/<type>` per condition.
fn applied_status_paths(applied: &Value) -> Vec<String> {
    let mut paths = Vec::new();
    for (field, value) in applied.as_object().into_iter().flatten() {
        if field == "conditions" {
            let types = value.as_array().into_iter().flatten().filter_map(|c| c["type"].as_str());
            paths.extend(types.map(|t| format!("conditions/{t}")));
        } else {
            paths.push(field.clone());
        }
    }
    paths
}

/// Removes what a manager applied before and no longer applies, as server-side apply does.
fn remove_status_paths(status: &mut Value, paths: &[&String]) {
    for path in paths {
        match path.strip_prefix("conditions/") {
            Some(type_) => {
                if let Some(conditions) = status["conditions"].as_array_mut() {
                    conditions.retain(|c| c["type"] != type_);
                }
            }
            None => {
                if let Some(fields) = status.as_object_mut() {
                    fields.remove(path.as_str());
                }
            }
        }
    }
}

/// Server-side apply of a status, simplified: each field sent replaces the stored one, and
/// `conditions` (a list map keyed by `type`) replaces only the conditions of the types sent.
fn apply_status_fields(status: &mut Value, applied: &Value) {
    if !status.is_object() {
        *status = json!({});
    }
    for (field, value) in applied.as_object().into_iter().flatten() {
        if field != "conditions" {
            status[field] = value.clone();
            continue;
        }
        let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        for condition in value.as_array().into_iter().flatten() {
            match conditions.iter_mut().find(|c| c["type"] == condition["type"]) {
                Some(existing) => *existing = condition.clone(),
                None => conditions.push(condition.clone()),
            }
        }
        status["conditions"] = Value::Array(conditions);
    }
}

fn store_if_changed(state: &mut State, key: Key, existing: &Value, mut updated: Value) -> (u16, Value) {
    if updated == *existing {
        return (200, updated);
    }
    if updated["spec"] != existing["spec"] {
        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
        updated["metadata"]["generation"] = json!(generation + 1);
    }
    state.resource_version += 1;
    updated["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
    let finalized = updated["metadata"]["deletionTimestamp"].is_string()
        && updated["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
    if finalized {
        remove_with_dependents(state, &key);
    } else {
        state.objects.insert(key, updated.clone());
    }
    (200, updated)
}

fn merge_object(state: &mut State, target: &Target, name: &str, patch: &Value) -> (u16, Value) {
    let key = key_of(target, name);
    let Some(existing) = state.objects.get(&key).cloned() else {
        return not_found(target, name);
    };
    if let Some(expected) = patch["metadata"]["resourceVersion"].as_str() {
        if existing["metadata"]["resourceVersion"].as_str() != Some(expected) {
            return (
                409,
                status_body(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version",
                ),
            );
        }
    }
    let mut updated = existing.clone();
    if target.subresource.as_deref() == Some("status") {
        merge_patch(&mut updated["status"], &patch["status"]);
    } else {
        let mut without_status = patch.clone();
        if let Some(fields) = without_status.as_object_mut() {
            fields.remove("status");
        }
        merge_patch(&mut updated, &without_status);
    }
    store_if_changed(state, key, &existing, updated)
}

fn delete_object(state: &mut State, target: &Target, name: &str) -> (u16, Value) {
    let key = key_of(target, name);
    let Some(existing) = state.objects.get(&key).cloned() else {
        return not_found(target, name);
    };
    let has_finalizers = existing["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if has_finalizers {
        let mut updated = existing.clone();
        updated["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
        state.resource_version += 1;
        updated["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        state.objects.insert(key, updated.clone());
        return (200, updated);
    }
    remove_with_dependents(state, &key);
    (200, existing)
}

/// Removes an object and, like the garbage collector, everything it owns.
fn remove_with_dependents(state: &mut State, key: &Key) {
    let Some(removed) = state.objects.remove(key) else { return };
    let Some(uid) = removed["metadata"]["uid"].as_str().map(str::to_owned) else { return };
    let dependents: Vec<Key> = state
        .objects
        .iter()
        .filter(|(_, v)| {
            v["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for dependent in dependents {
        remove_with_dependents(state, &dependent);
    }
}
