//! Checks answers (and the bodies of requests that succeeded) against the schemas in
//! docs/openapi.json. OpenAPI 3.0 schemas are JSON Schema plus `nullable`; that one
//! keyword is rewritten, `$ref`s resolve against the document's components.

use std::sync::OnceLock;

use serde_json::{json, Value};

pub struct Spec {
    doc: Value,
    /// `components.schemas`, with `nullable` rewritten.
    schemas: Value,
}

pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let text = std::fs::read_to_string(path).expect("read docs/openapi.json");
        let doc: Value = serde_json::from_str(&text).expect("docs/openapi.json is JSON");
        assert!(
            doc["openapi"].as_str().unwrap_or("").starts_with("3.0"),
            "docs/openapi.json is not OpenAPI 3.0"
        );
        let schemas = rewrite_nullable(doc["components"]["schemas"].clone());
        Spec { doc, schemas }
    })
}

/// `{..., "nullable": true}` → `{"anyOf": [{...}, {"type": "null"}]}`, everywhere.
fn rewrite_nullable(v: Value) -> Value {
    match v {
        Value::Object(mut m) => {
            let nullable = m.remove("nullable") == Some(Value::Bool(true));
            let inner: serde_json::Map<String, Value> = m
                .into_iter()
                .map(|(k, v)| (k, rewrite_nullable(v)))
                .collect();
            if nullable {
                json!({ "anyOf": [Value::Object(inner), { "type": "null" }] })
            } else {
                Value::Object(inner)
            }
        }
        Value::Array(a) => Value::Array(a.into_iter().map(rewrite_nullable).collect()),
        other => other,
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('?')
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
        .split('/')
        .collect()
}

impl Spec {
    /// The operation documented for `method` on a concrete `path`.
    fn operation(&self, method: &str, path: &str) -> Option<(&str, &Value)> {
        let concrete = segments(path);
        self.doc["paths"]
            .as_object()?
            .iter()
            .find(|(template, _)| {
                let t = segments(template);
                t.len() == concrete.len()
                    && t.iter()
                        .zip(&concrete)
                        .all(|(t, c)| t.starts_with('{') || t == c)
            })
            .and_then(|(template, item)| {
                item.get(method.to_ascii_lowercase())
                    .map(|op| (template.as_str(), op))
            })
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').expect("local $ref");
                self.resolve(
                    self.doc
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("dangling $ref {r}")),
                )
            }
            None => v,
        }
    }

    /// Panics unless `body` is what docs/openapi.json documents for this answer.
    pub fn check_response(&self, method: &str, path: &str, status: u16, body: &Value) {
        let Some((template, op)) = self.operation(method, path) else {
            // Unknown paths (404) and methods (405) answer with the error body.
            assert!(
                status == 404 || status == 405,
                "{method} {path} is not documented but answered {status}: {body}"
            );
            self.validate(
                &json!({ "$ref": "#/components/schemas/Error" }),
                body,
                "error answer",
            );
            return;
        };
        let response = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| {
                panic!("{method} {template} answered {status}, which docs/openapi.json does not document: {body}")
            });
        let response = self.resolve(response);
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "no JSON schema documented for {method} {template} {status}"
        );
        self.validate(schema, body, &format!("{method} {template} {status}"));
    }

    /// Panics unless `body` matches the documented request body of this operation.
    pub fn check_request(&self, method: &str, path: &str, body: &Value) {
        let (template, op) = self
            .operation(method, path)
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        let schema = &self.resolve(&op["requestBody"])["content"]["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "{method} {template} documents no request body"
        );
        self.validate(
            schema,
            body,
            &format!("request body of {method} {template}"),
        );
    }

    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let root = json!({
            "components": { "schemas": self.schemas },
            "allOf": [rewrite_nullable(schema.clone())],
        });
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("the schema of {what} is invalid: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match docs/openapi.json:\n  {}\nbody: {instance:#}",
            errors.join("\n  ")
        );
    }
}
