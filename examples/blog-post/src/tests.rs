use mneme_sdk::{runtime, Context, Effect, Entity, Reply, SideEffect};
use serde_json::json;

use super::*;

fn handle(state: &State, command: Command) -> Effect<Event> {
    BlogPostEntity::handle(state, command, &Context::new("blog-post", "p1", 0, 0))
}

fn content() -> PostContent {
    PostContent { post_id: "p1".into(), title: "Hello".into(), body: "first".into() }
}

fn draft() -> State {
    State::Draft { content: content() }
}

#[test]
fn add_post_creates_a_draft_and_replies_the_post_id() {
    let effect = handle(&State::Blank, Command::AddPost { content: content() });
    assert_eq!(effect.events(), &[Event::PostAdded { post_id: "p1".into(), content: content() }]);
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"postId": "p1"})));
    assert_eq!(BlogPostEntity::apply(State::Blank, &effect.events()[0]), draft());
}

#[test]
fn blank_post_handles_only_add_post() {
    for command in [Command::GetPost, Command::Publish, Command::ChangeBody { new_body: "x".into() }] {
        let effect = handle(&State::Blank, command);
        assert!(effect.is_unhandled());
        assert!(effect.reply_value().is_none());
    }
}

#[test]
fn draft_body_changes_and_get_post_returns_content() {
    let effect = handle(&draft(), Command::ChangeBody { new_body: "second".into() });
    assert_eq!(effect.events(), &[Event::BodyChanged { post_id: "p1".into(), new_body: "second".into() }]);
    assert_eq!(effect.reply_value(), Some(&Reply::ack()));
    let state = BlogPostEntity::apply(draft(), &effect.events()[0]);
    let effect = handle(&state, Command::GetPost);
    assert!(effect.is_none());
    assert_eq!(
        effect.reply_value().and_then(Reply::json),
        Some(json!({"postId": "p1", "title": "Hello", "body": "second"}))
    );
}

#[test]
fn publish_persists_logs_and_makes_the_post_read_only() {
    let effect = handle(&draft(), Command::Publish);
    assert_eq!(effect.events(), &[Event::Published { post_id: "p1".into() }]);
    assert_eq!(effect.reply_value(), Some(&Reply::ack()));
    assert_eq!(effect.side_effects(), &[SideEffect::info("Blog post p1 was published")]);
    let published = BlogPostEntity::apply(draft(), &effect.events()[0]);
    assert_eq!(published, State::Published { content: content() });
    assert!(handle(&published, Command::Publish).is_unhandled());
    assert!(handle(&published, Command::ChangeBody { new_body: "x".into() }).is_unhandled());
    assert!(handle(&published, Command::GetPost).reply_value().is_some());
}

#[test]
fn adding_an_existing_post_is_unhandled_with_an_error_reply() {
    let effect = handle(&draft(), Command::AddPost { content: content() });
    assert!(effect.is_unhandled());
    assert_eq!(effect.reply_value(), Some(&Reply::error("Cannot add post while in draft state")));
    let effect = handle(&State::Published { content: content() }, Command::AddPost { content: content() });
    assert!(effect.is_unhandled());
    assert_eq!(effect.reply_value(), Some(&Reply::error("Cannot add post, already published")));
}

#[test]
fn json_shapes_are_the_documented_ones() {
    let ctx = Context::new("blog-post", "p1", 0, 0);
    let effect = runtime::handle_command::<BlogPostEntity>(
        br#"{"state":"Blank"}"#,
        br#"{"type":"AddPost","content":{"postId":"p1","title":"T","body":"B"}}"#,
        &ctx,
    )
    .unwrap();
    let event = &effect.events()[0];
    assert_eq!(event.manifest, "PostAdded");
    assert_eq!(event.tags, ["blog"]);
    let json: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(
        json,
        json!({"type": "PostAdded", "postId": "p1", "content": {"postId": "p1", "title": "T", "body": "B"}})
    );
    let state =
        runtime::apply_events::<BlogPostEntity>(br#"{"state":"Blank"}"#, [("PostAdded", &event.payload[..])]).unwrap();
    let effect =
        runtime::handle_command::<BlogPostEntity>(&state, br#"{"type":"ChangeBody","newBody":"N"}"#, &ctx).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&effect.events()[0].payload).unwrap();
    assert_eq!(json, json!({"type": "BodyChanged", "postId": "p1", "newBody": "N"}));
    let json: serde_json::Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(json, json!({"state": "Draft", "content": {"postId": "p1", "title": "T", "body": "B"}}));
}
