//! A blog post, after Akka's `BlogPostEntity` example: a post is added as a draft,
//! its body can change while it is a draft, and once published it is read-only.
//!
//! Commands: `{"type":"AddPost","content":{"postId":"p1","title":"T","body":"B"}}`,
//! `{"type":"ChangeBody","newBody":"..."}`, `{"type":"Publish"}`, `{"type":"GetPost"}`.
//!
//! Replies, as in Akka: `AddPost` → `{"postId":"p1"}` (`AddPostDone`); `ChangeBody`
//! and `Publish` → `{"ok":true}` (`Done`); `GetPost` → the post content
//! `{"postId":..,"title":..,"body":..}`. A command that does not apply in the current
//! state is unhandled; `AddPost` on an existing post is unhandled *and* replies an
//! error saying why, like Akka's `Effect.unhandled.thenRun(replyTo ! StatusReply.Error(..))`.

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply, SideEffect};
use serde::{Deserialize, Serialize};

pub struct BlogPostEntity;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostContent {
    pub post_id: String,
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Command {
    AddPost { content: PostContent },
    ChangeBody { new_body: String },
    Publish,
    GetPost,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Event {
    PostAdded { post_id: String, content: PostContent },
    BodyChanged { post_id: String, new_body: String },
    Published { post_id: String },
}

/// Stored as `{"state":"Blank"}`, `{"state":"Draft","content":{..}}` or
/// `{"state":"Published","content":{..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state")]
pub enum State {
    #[default]
    Blank,
    Draft {
        content: PostContent,
    },
    Published {
        content: PostContent,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AddPostDone<'a> {
    post_id: &'a str,
}

impl Entity for BlogPostEntity {
    type Command = Command;
    type Event = Event;
    type State = State;
    const TYPE_NAME: &'static str = "blog-post";

    fn handle(state: &State, command: Command, _ctx: &Context) -> Effect<Event> {
        match state {
            State::Blank => match command {
                Command::AddPost { content } => add_post(content),
                _ => Effect::unhandled(),
            },
            State::Draft { content } => match command {
                Command::ChangeBody { new_body } => {
                    Effect::persist(Event::BodyChanged { post_id: content.post_id.clone(), new_body })
                        .then_reply(Reply::ack())
                }
                Command::Publish => publish(content),
                Command::GetPost => Effect::reply(Reply::ok(content)),
                Command::AddPost { .. } => {
                    Effect::unhandled().then_reply(Reply::error("Cannot add post while in draft state"))
                }
            },
            State::Published { content } => match command {
                Command::GetPost => Effect::reply(Reply::ok(content)),
                Command::AddPost { .. } => {
                    Effect::unhandled().then_reply(Reply::error("Cannot add post, already published"))
                }
                _ => Effect::unhandled(),
            },
        }
    }

    fn apply(state: State, event: &Event) -> State {
        match (state, event) {
            (State::Blank, Event::PostAdded { content, .. }) => State::Draft { content: content.clone() },
            (State::Draft { content }, Event::BodyChanged { new_body, .. }) => {
                State::Draft { content: PostContent { body: new_body.clone(), ..content } }
            }
            (State::Draft { content }, Event::Published { .. }) => State::Published { content },
            // As in Akka: never persisted by the command handler, so a corrupt journal.
            (state, event) => panic!("unexpected event [{event:?}] in state [{state:?}]"),
        }
    }

    fn tags(_event: &Event) -> Vec<String> {
        vec!["blog".to_owned()]
    }
}

fn add_post(content: PostContent) -> Effect<Event> {
    let reply = Reply::ok(&AddPostDone { post_id: &content.post_id });
    Effect::persist(Event::PostAdded { post_id: content.post_id.clone(), content }).then_reply(reply)
}

fn publish(content: &PostContent) -> Effect<Event> {
    let post_id = content.post_id.clone();
    Effect::persist(Event::Published { post_id: post_id.clone() })
        .then_reply(Reply::ack())
        .then_run(SideEffect::info(format!("Blog post {post_id} was published")))
}

export_entity!(BlogPostEntity);

#[cfg(test)]
mod tests;
