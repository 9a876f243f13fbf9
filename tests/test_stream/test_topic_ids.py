"""Which log of a topic a consumer's positions refer to (``stream.kafka.topic_ids``): a broker restarted empty
creates the topics again with new ids, and the consumer's metadata learns them late."""

from __future__ import annotations

from stream.kafka.topic_ids import TopicIds

T = "cam.video"


def test_the_first_record_is_no_change_and_a_new_id_is() -> None:
    ids = TopicIds()
    assert not ids.changed(T, "a")  # nothing recorded yet
    assert ids.record(T, "a") is False and ids.recorded(T) == "a"
    assert not ids.changed(T, "a") and not ids.changed(T, None)  # same id; metadata without the topic
    assert ids.changed(T, "b")
    assert ids.record(T, "b") is True and ids.recorded(T) == "b"


def test_stale_metadata_after_an_announced_rejoin_does_not_make_a_second_change() -> None:
    """The failure this fixes: the group assigned the new log while the consumer's metadata still named the old
    id, and the later refresh looked like a second recreation (a second rejoin, partial answers after ready)."""
    ids = TopicIds()
    ids.record(T, "old")
    ids.announce({T: "new"})  # the admin client recreated the topic
    assert ids.changed(T, "old")  # the consumer must rejoin even though its metadata is stale
    assert ids.record(T, "old") is True and ids.recorded(T) == "new"  # the rejoin's assignment: the new log
    assert not ids.changed(T, "old")  # still stale: the old id is retired
    assert not ids.changed(T, "new")  # the refresh catches up: no second change
    assert ids.record(T, "new") is False and ids.recorded(T) == "new"


def test_without_an_announcement_a_refresh_to_a_new_id_is_one_change_and_the_old_id_is_retired() -> None:
    ids = TopicIds()
    ids.record(T, "old")
    assert ids.record(T, "new") is True
    assert not ids.changed(T, "old")  # another client's stale view later: the old id means nothing now
    assert ids.record(T, "old") is False and ids.recorded(T) == "new"


def test_a_third_log_after_an_announcement_is_still_seen() -> None:
    """Once the metadata shows the announced id, the announcement is dropped: a later recreation that only the
    metadata reports is a change again."""
    ids = TopicIds()
    ids.record(T, "one")
    ids.announce({T: "two"})
    ids.record(T, "two")
    assert ids.changed(T, "three") and ids.record(T, "three") is True and ids.recorded(T) == "three"


def test_announcements_are_per_topic() -> None:
    ids = TopicIds()
    ids.record(T, "a")
    ids.record("cam.candidates", "x")
    ids.announce({"cam.candidates": "y"})
    assert not ids.changed(T, "a") and ids.changed("cam.candidates", "x")


def test_a_log_is_gone_when_the_topic_is_missing_or_replaced() -> None:
    ids = TopicIds()
    assert not ids.gone(T, None)  # nothing recorded: nothing to protect
    ids.record(T, "a")
    assert not ids.gone(T, "a")
    assert ids.gone(T, None)  # the metadata lost the topic
    assert ids.gone(T, "b")  # another log now
    ids.announce({T: "c"})
    assert ids.gone(T, "a")  # announced, the metadata not caught up yet
