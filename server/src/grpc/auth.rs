//! Access control on the gRPC front end, with the HTTP API's tokens
//! (`--auth-file`). KurrentDB's clients send a user name and password as
//! `authorization: Basic base64(user:password)`; Skald reads the user as a
//! token's name and the password as the token itself, so
//! `kurrentdb://NAME:TOKEN@host:2113` connects as that token. `Bearer TOKEN`
//! works too. The interceptor authenticates every call of the services that
//! touch data (no credentials or an unknown token: `UNAUTHENTICATED`); each
//! handler then asks the [`Access`] it left for the role and streams the
//! call needs (`PERMISSION_DENIED` otherwise). Gossip and server features
//! stay open, as on KurrentDB: clients call them before anything else.

use std::sync::Arc;

use base64::Engine;
use tonic::{Request, Status};

use crate::auth::{Authenticator, Principal, Role};
use crate::metrics::Metrics;
use crate::model::StreamName;

/// Who is calling: a token's owner, or anyone when access control is off.
#[derive(Debug, Clone)]
pub struct Access(Option<Arc<Principal>>);

impl Access {
    /// What the interceptor left on `request`; `INTERNAL` for a call that
    /// did not pass it (a service added without it), so a mistake there
    /// refuses everything rather than allowing it.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Access>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!("a gRPC call reached a handler without an access check");
                Status::internal("the call passed no access check")
            })
    }

    /// `PERMISSION_DENIED` unless the caller's role includes `role`.
    pub fn need(&self, role: Role, metrics: &Metrics) -> Result<(), Status> {
        match &self.0 {
            Some(p) if p.role < role => {
                metrics.auth_forbidden.inc();
                Err(Status::permission_denied(format!(
                    "Access denied: token '{}' is a {}; this needs a {} token",
                    p.name,
                    p.role.as_str(),
                    role.as_str()
                )))
            }
            _ => Ok(()),
        }
    }

    /// `PERMISSION_DENIED` unless `stream` is within the caller's prefixes.
    pub fn check_stream(&self, stream: &StreamName, metrics: &Metrics) -> Result<(), Status> {
        match &self.0 {
            Some(p) if !p.allows_stream(stream.as_str()) => {
                metrics.auth_forbidden.inc();
                Err(Status::permission_denied(format!(
                    "Access denied: token '{}' may only touch streams starting with {:?}",
                    p.name,
                    p.prefixes.as_deref().unwrap_or_default()
                )))
            }
            _ => Ok(()),
        }
    }

    /// `need(role)` and `check_stream(stream)` at once.
    pub fn need_stream(
        &self,
        role: Role,
        stream: &StreamName,
        metrics: &Metrics,
    ) -> Result<(), Status> {
        self.need(role, metrics)?;
        self.check_stream(stream, metrics)
    }

    /// The stream prefixes the caller is limited to; `None`: every stream.
    pub fn scope(&self) -> Option<Arc<[String]>> {
        self.0.as_ref().and_then(|p| p.prefixes.clone())
    }
}

/// The interceptor of the data services: leaves an [`Access`] on every call
/// it lets through.
#[derive(Clone)]
pub struct Authenticate {
    pub auth: Option<Arc<Authenticator>>,
    pub metrics: Arc<Metrics>,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let access = match &self.auth {
            None => Access(None),
            Some(auth) => {
                let principal = credentials(&request).and_then(|(user, token)| {
                    let principal = auth.current().authenticate(&token).ok_or_else(|| {
                        Status::unauthenticated("the credentials are not known to this server")
                    })?;
                    match user {
                        Some(user) if user != principal.name => Err(Status::unauthenticated(
                            "the user name is not the name of the token given as the password",
                        )),
                        _ => Ok(principal),
                    }
                });
                match principal {
                    Ok(principal) => Access(Some(principal)),
                    Err(status) => {
                        self.metrics.auth_unauthorized.inc();
                        return Err(status);
                    }
                }
            }
        };
        request.extensions_mut().insert(access);
        Ok(request)
    }
}

/// The user name (for `Basic`) and the token of the call's `authorization`.
fn credentials<T>(request: &Request<T>) -> Result<(Option<String>, String), Status> {
    const HOW: &str = "this server needs credentials: the user name is a token's name and the password the token (kurrentdb://NAME:TOKEN@host), or 'authorization: Bearer TOKEN'";
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated(HOW))?;
    let text = value.to_str().map_err(|_| Status::unauthenticated(HOW))?;
    let (scheme, rest) = text
        .split_once(' ')
        .ok_or_else(|| Status::unauthenticated(HOW))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok((None, rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Status::unauthenticated(HOW));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Status::unauthenticated(HOW))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| Status::unauthenticated(HOW))?;
    Ok((Some(user.to_owned()), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            let value = value.parse().expect("ASCII");
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    #[test]
    fn basic_credentials_are_a_token_name_and_the_token() {
        let basic = |user_password: &str| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
            credentials(&with(Some(&format!("Basic {encoded}"))))
        };
        let (user, token) = basic("shop:skald_abc").expect("valid");
        assert_eq!(
            (user.as_deref(), token.as_str()),
            (Some("shop"), "skald_abc")
        );
        // A password may hold ':'; the user name may not.
        let (user, token) = basic("shop:a:b").expect("valid");
        assert_eq!((user.as_deref(), token.as_str()), (Some("shop"), "a:b"));
        let (user, token) = credentials(&with(Some("bearer  skald_xyz "))).expect("valid");
        assert_eq!((user, token.as_str()), (None, "skald_xyz"));
    }

    #[test]
    fn missing_or_malformed_credentials_are_unauthenticated() {
        for value in [
            None,
            Some("Basic"),
            Some("Basic !!!not-base64"),
            Some("Basic c2hvcA=="), // "shop": no ':'
            Some("Bearer "),
            Some("Digest abc"),
        ] {
            let refused = credentials(&with(value)).expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{value:?}");
            assert!(refused.message().contains("NAME:TOKEN"), "{value:?}");
        }
    }

    #[test]
    fn a_call_that_passed_no_interceptor_is_refused() {
        let refused = Access::of(&with(None)).expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Internal);
    }
}
