//! Why a connection is refused.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why a connection is refused, before anything is streamed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// No token, or one the server does not know: 401.
    #[error("missing or unknown token")]
    Unauthorized,
    /// A `Last-Event-ID` that is not a log position (`<transaction>-<position>`): 400.
    #[error("Last-Event-ID `{0}` is not a log position (expected `<transaction>-<position>`)")]
    BadLastEventId(String),
    /// A room parameter that is empty or too long: 400.
    #[error("bad room parameter: {0}")]
    BadRoom(String),
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        let body = format!("{self}\n");
        match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                body,
            )
                .into_response(),
            Self::BadLastEventId(_) | Self::BadRoom(_) => {
                (StatusCode::BAD_REQUEST, body).into_response()
            }
        }
    }
}
