//! Rooms: which of its tenant's events a connection receives.
//!
//! The rule, like Socket.io rooms `project.{id}` and `user.{id}` inside a tenant:
//!
//! - an event's **tenant** is the tenant of its stream; a connection only ever receives events
//!   of the tenant its token names, whatever else it asks for;
//! - an event's **project** is the string `metadata.extra.project`, its **user** the string
//!   `metadata.extra.user` (either may be absent);
//! - a connection asks for rooms with `?project=a,b` and `?user=u` (comma-separated). Without
//!   either it is in the tenant room and receives all of its tenant's events; otherwise it
//!   receives the events whose project is one of its projects **or** whose user is one of its
//!   users (the union of its rooms, as a socket in several rooms gets what any of them gets).
//!
//! Projects and users are filters inside the tenant, not permissions: anyone holding the
//! tenant's token may join any of its rooms.

use eventsource_core::{RecordedEvent, TenantId};

use crate::error::PushError;

/// The longest room name accepted.
const MAX_ROOM_LEN: usize = 200;

/// The rooms of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rooms {
    tenant: TenantId,
    projects: Vec<String>,
    users: Vec<String>,
}

impl Rooms {
    /// The tenant room: every event of `tenant`.
    #[must_use]
    pub fn tenant(tenant: TenantId) -> Self {
        Self {
            tenant,
            projects: Vec::new(),
            users: Vec::new(),
        }
    }

    /// Also joins the room of `project`.
    #[must_use]
    pub fn with_project(mut self, project: impl Into<String>) -> Self {
        self.projects.push(project.into());
        self
    }

    /// Also joins the room of `user`.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.users.push(user.into());
        self
    }

    /// The rooms a request asks for: its tenant, and the comma-separated `project` and `user`
    /// query values.
    pub(crate) fn from_query(
        tenant: TenantId,
        projects: Option<&str>,
        users: Option<&str>,
    ) -> Result<Self, PushError> {
        Ok(Self {
            tenant,
            projects: split(projects)?,
            users: split(users)?,
        })
    }

    /// The tenant of these rooms.
    #[must_use]
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    /// Whether `event` goes to a connection in these rooms (see the module docs for the rule).
    #[must_use]
    pub fn admits(&self, event: &RecordedEvent) -> bool {
        if event.tenant() != &self.tenant {
            return false;
        }
        if self.projects.is_empty() && self.users.is_empty() {
            return true;
        }
        let in_any = |names: &[String], field| {
            project_field(event, field).is_some_and(|v| names.iter().any(|n| n == v))
        };
        in_any(&self.projects, "project") || in_any(&self.users, "user")
    }
}

/// The project of `event` (`metadata.extra.project`), if any.
#[must_use]
pub fn project_of(event: &RecordedEvent) -> Option<&str> {
    project_field(event, "project")
}

/// The user of `event` (`metadata.extra.user`), if any.
#[must_use]
pub fn user_of(event: &RecordedEvent) -> Option<&str> {
    project_field(event, "user")
}

fn project_field<'a>(event: &'a RecordedEvent, field: &str) -> Option<&'a str> {
    event.metadata.extra.get(field).and_then(|v| v.as_str())
}

fn split(value: Option<&str>) -> Result<Vec<String>, PushError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(|name| {
            let name = name.trim();
            if name.is_empty() || name.len() > MAX_ROOM_LEN {
                Err(PushError::BadRoom(format!(
                    "room names are 1 to {MAX_ROOM_LEN} characters, comma-separated"
                )))
            } else {
                Ok(name.to_owned())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use eventsource_core::{EventId, LogPosition, Metadata, StreamId, Version};

    use super::*;

    fn event(tenant: &str, project: Option<&str>, user: Option<&str>) -> RecordedEvent {
        let mut metadata = Metadata::new();
        if let Some(p) = project {
            metadata = metadata.with_extra("project", p.into());
        }
        if let Some(u) = user {
            metadata = metadata.with_extra("user", u.into());
        }
        RecordedEvent {
            event_id: EventId::new(),
            stream: StreamId::new(TenantId::new(tenant), "task", "t-1"),
            version: Version::new(1),
            position: LogPosition::new(1, 1),
            event_type: "task-updated".into(),
            schema_version: 1,
            recorded_at: chrono::Utc::now(),
            metadata,
            payload: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_tenant_room_admits_its_tenant_only() {
        let rooms = Rooms::tenant(TenantId::new("acme"));
        assert!(rooms.admits(&event("acme", None, None)));
        assert!(rooms.admits(&event("acme", Some("alpha"), Some("ada"))));
        assert!(!rooms.admits(&event("globex", None, None)));
    }

    #[test]
    fn project_and_user_rooms_admit_their_union_within_the_tenant() {
        let rooms = Rooms::from_query(TenantId::new("acme"), Some("alpha, beta"), Some("ada"))
            .expect("valid rooms");
        assert!(rooms.admits(&event("acme", Some("beta"), None)));
        assert!(rooms.admits(&event("acme", Some("gamma"), Some("ada"))));
        assert!(!rooms.admits(&event("acme", Some("gamma"), Some("alan"))));
        assert!(!rooms.admits(&event("acme", None, None)));
        assert!(!rooms.admits(&event("globex", Some("alpha"), Some("ada"))));
    }

    #[test]
    fn empty_room_names_are_refused() {
        let tenant = TenantId::new("acme");
        assert!(Rooms::from_query(tenant.clone(), Some("alpha,"), None).is_err());
        assert!(Rooms::from_query(tenant, None, Some(&"u".repeat(201))).is_err());
    }
}
