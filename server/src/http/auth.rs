//! Access checks of the HTTP API: the middleware that authenticates the
//! bearer token and checks the route's role (401/403), and [`Caller`], which
//! handlers use for what only they know (a stream name, a `$all` filter).
//!
//! Which route needs what is one table, [`need`]; a route missing from it
//! needs an admin without stream prefixes, so a new route is closed until
//! someone decides otherwise.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::auth::{Authenticator, Principal, Role};
use crate::metrics::Metrics;
use crate::model::StreamName;

/// What the middleware needs.
#[derive(Clone)]
pub struct AuthLayer {
    /// `None`: access control is off and every caller may do everything.
    pub auth: Option<Arc<Authenticator>>,
    pub metrics: Arc<Metrics>,
}

/// What a route asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: liveness.
    Open,
    /// Any known token (unmatched routes answer 404/405 to it).
    Known,
    /// At least this role; stream prefixes are checked by the handler.
    Role(Role),
    /// An admin limited to no prefixes: server-wide work.
    ServerAdmin,
}

/// The access each route needs, by method and route pattern.
pub fn need(method: &Method, route: Option<&str>) -> Need {
    let Some(route) = route else {
        return Need::Known;
    };
    let read = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/health/live" | "/health/ready" => Need::Open,
        // The console's files hold no data; it asks for a token itself.
        "/" | "/ui/" | "/ui/{file}" if read => Need::Open,
        "/streams/{stream}"
        | "/streams/{stream}/{revision}"
        | "/streams/{stream}/metadata"
        | "/all"
        | "/subscriptions/all"
        | "/subscriptions/streams/{stream}"
        | "/info"
            if read =>
        {
            Need::Role(Role::Reader)
        }
        "/streams/{stream}" if *method == Method::POST => Need::Role(Role::Writer),
        "/streams/{stream}" if *method == Method::DELETE => Need::Role(Role::Admin),
        "/streams/{stream}/metadata" if *method == Method::PUT => Need::Role(Role::Admin),
        "/admin/streams" | "/admin/streams/{stream}" if read => Need::Role(Role::Admin),
        _ => Need::ServerAdmin,
    }
}

/// Who is asking: the token's owner, or anyone when access control is off.
/// Every request that passed the middleware carries one.
#[derive(Debug, Clone)]
pub struct Caller(Option<Arc<Principal>>);

impl Caller {
    /// A 403 unless `stream` is within the caller's prefixes.
    pub fn check_stream(&self, stream: &StreamName) -> Result<(), ApiError> {
        match &self.0 {
            Some(p) if !p.allows_stream(stream.as_str()) => Err(ApiError::Forbidden(format!(
                "token '{}' may only touch streams starting with {:?}",
                p.name,
                p.prefixes.as_deref().unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    /// The stream prefixes the caller is limited to; `None`: every stream.
    pub fn scope(&self) -> Option<Arc<[String]>> {
        self.0.as_ref().and_then(|p| p.prefixes.clone())
    }

    /// The token's name, role and prefixes; `None` with access control off.
    pub fn info(&self) -> Option<skald_proto::CallerInfo> {
        self.0.as_ref().map(|p| skald_proto::CallerInfo {
            name: p.name.clone(),
            role: p.role.as_str().to_owned(),
            stream_prefixes: p.prefixes.as_deref().map(<[String]>::to_vec),
        })
    }

    /// Whether a token was checked for this caller (access control is on).
    pub fn is_checked(&self) -> bool {
        self.0.is_some()
    }

    /// Whether the caller may see the server's configuration (paths, flags).
    pub fn is_server_admin(&self) -> bool {
        self.0.as_ref().is_none_or(|p| p.is_server_admin())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("the request passed no access check".into()))
    }
}

/// Authenticates the request and checks its route's [`need`], then runs it;
/// handlers get the [`Caller`]. Called by the one middleware, `track`, which
/// counts refused requests like the others.
pub async fn authorize(
    layer: &AuthLayer,
    matched: Option<&MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let need = need(request.method(), matched.map(MatchedPath::as_str));
    if layer.auth.is_some() && need == Need::Open {
        return next.run(request).await;
    }
    let caller = match admit(layer, need, request.headers()) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let checked = caller.is_checked();
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    layer.count_handler_refusal(checked, &response);
    response
}

impl AuthLayer {
    /// Counts a handler's 403 (a stream-prefix refusal) to a caller whose
    /// token was checked, as the access check counts its own.
    pub fn count_handler_refusal(&self, checked: bool, response: &Response) {
        if checked && response.status() == axum::http::StatusCode::FORBIDDEN {
            self.metrics.auth_forbidden.inc();
        }
    }
}

/// The caller of a request that needs `need` (not [`Need::Open`]) and
/// carries `headers`, or the 401/403 that refuses it (counted). With access
/// control off, anyone.
pub fn admit(layer: &AuthLayer, need: Need, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(auth) = &layer.auth else {
        return Ok(Caller(None));
    };
    let principal = match bearer(headers) {
        Err(problem) => {
            layer.metrics.auth_unauthorized.inc();
            return Err(problem);
        }
        Ok(token) => match auth.current().authenticate(token) {
            Some(principal) => principal,
            None => {
                layer.metrics.auth_unauthorized.inc();
                return Err(ApiError::Unauthorized {
                    message: "the bearer token is not known to this server".into(),
                    invalid_token: true,
                });
            }
        },
    };
    let refusal =
        match need {
            Need::Role(role) if principal.role < role => Some(format!(
                "token '{}' is a {}; this needs a {} token",
                principal.name,
                principal.role.as_str(),
                role.as_str()
            )),
            Need::ServerAdmin if !principal.is_server_admin() => {
                Some(format!(
            "token '{}' is a {}{}; this needs an admin token not limited to stream prefixes",
            principal.name,
            principal.role.as_str(),
            if principal.prefixes.is_some() { " limited to stream prefixes" } else { "" }
        ))
            }
            _ => None,
        };
    if let Some(message) = refusal {
        layer.metrics.auth_forbidden.inc();
        return Err(ApiError::Forbidden(message));
    }
    Ok(Caller(Some(principal)))
}

/// The token of `Authorization: Bearer <token>`, or the 401 to answer.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = |message: &str| ApiError::Unauthorized {
        message: message.to_owned(),
        invalid_token: false,
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| missing("this server needs an 'Authorization: Bearer <token>' header"))?;
    let text = value
        .to_str()
        .map_err(|_| missing("the Authorization header is not visible ASCII"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or_else(|| missing("the Authorization header must be 'Bearer <token>'"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing("the Authorization header must be 'Bearer <token>'"));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_the_documented_role() {
        let cases = [
            (Method::GET, "/health/live", Need::Open),
            (Method::GET, "/health/ready", Need::Open),
            (Method::GET, "/streams/{stream}", Need::Role(Role::Reader)),
            (Method::HEAD, "/streams/{stream}", Need::Role(Role::Reader)),
            (
                Method::GET,
                "/streams/{stream}/{revision}",
                Need::Role(Role::Reader),
            ),
            (
                Method::GET,
                "/streams/{stream}/metadata",
                Need::Role(Role::Reader),
            ),
            (Method::GET, "/all", Need::Role(Role::Reader)),
            (Method::GET, "/subscriptions/all", Need::Role(Role::Reader)),
            (
                Method::GET,
                "/subscriptions/streams/{stream}",
                Need::Role(Role::Reader),
            ),
            (Method::GET, "/info", Need::Role(Role::Reader)),
            (Method::POST, "/streams/{stream}", Need::Role(Role::Writer)),
            (Method::DELETE, "/streams/{stream}", Need::Role(Role::Admin)),
            (
                Method::PUT,
                "/streams/{stream}/metadata",
                Need::Role(Role::Admin),
            ),
            (Method::GET, "/admin/streams", Need::Role(Role::Admin)),
            (
                Method::GET,
                "/admin/streams/{stream}",
                Need::Role(Role::Admin),
            ),
            (Method::GET, "/admin/stats", Need::ServerAdmin),
            (Method::GET, "/metrics", Need::ServerAdmin),
            (Method::POST, "/admin/scavenge", Need::ServerAdmin),
            (Method::GET, "/admin/backups", Need::ServerAdmin),
            // Closed unless listed: another method on a reader's route, a new route.
            (Method::PATCH, "/streams/{stream}", Need::ServerAdmin),
            (Method::GET, "/admin/something-new", Need::ServerAdmin),
        ];
        for (method, route, expected) in cases {
            assert_eq!(need(&method, Some(route)), expected, "{method} {route}");
        }
        assert_eq!(need(&Method::GET, None), Need::Known);
    }
}
