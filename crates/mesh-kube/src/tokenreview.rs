//! Service-account tokens at the CA, checked by the API server's
//! TokenReview: a workload's first certificate request carries its
//! projected token (audience `istio-ca` by default, as Istio's), and the
//! CA issues the SVID of the service account the API server names, nothing
//! else. The token's own claims are never trusted: only the review's
//! answer is.

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use mesh_ca::service::{ServiceAccount, ServiceAccountTokens, TokenReviewError};

/// Istio's audience for the CA's tokens.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// The TokenReview reviewer.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audience: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// Reviews tokens for `audience` with the API server `client` talks to.
    pub fn new(client: Client, audience: impl Into<String>) -> Self {
        Self {
            client,
            audience: audience.into(),
        }
    }

    async fn check(&self, token: &str) -> Result<ServiceAccount, TokenReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                TokenReviewError::Unavailable(format!(
                    "create tokenreviews.authentication.k8s.io: {e}"
                ))
            })?;
        accepted(&answer, &self.audience)
    }
}

/// The service account of a TokenReview's answer, if it authenticated the
/// token for `audience` as a service account.
pub fn accepted(answer: &TokenReview, audience: &str) -> Result<ServiceAccount, TokenReviewError> {
    let rejected = |why: String| Err(TokenReviewError::Rejected(why));
    let Some(status) = &answer.status else {
        return rejected("the TokenReview has no status".to_owned());
    };
    if status.authenticated != Some(true) {
        return rejected(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".to_owned()),
        );
    }
    // An API server that ignored the audience asked for would accept a
    // token minted for anything else: the answer must name ours.
    if !status
        .audiences
        .iter()
        .flatten()
        .any(|a| a.as_str() == audience)
    {
        return rejected(format!("the token is not for the audience {audience:?}"));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    match username.split(':').collect::<Vec<_>>()[..] {
        ["system", "serviceaccount", namespace, name]
            if !namespace.is_empty() && !name.is_empty() =>
        {
            Ok(ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => rejected(format!("{username:?} is not a service account")),
    }
}

impl ServiceAccountTokens for TokenReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ServiceAccount, TokenReviewError>> + Send + 'a>> {
        Box::pin(self.check(token))
    }
}
