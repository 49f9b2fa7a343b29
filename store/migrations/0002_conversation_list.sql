-- The conversation list (GET /api/conversations): a user's sessions newest first, each
-- with a title (its first user message), read from one index instead of sorting all of
-- the user's sessions and looking up every session's first message.

ALTER TABLE sessions ADD COLUMN title text;

UPDATE sessions AS s
SET title = (
    SELECT m.text FROM messages AS m
    WHERE m.session_id = s.id AND m.role = 'user'
    ORDER BY m.created_at, m.turn
    LIMIT 1
);

-- Pages are (user, last_turn_at < cursor) newest first: this index serves them in order,
-- and still serves the lookups by user alone that sessions_user did.
DROP INDEX sessions_user;
CREATE INDEX sessions_user_recent ON sessions (user_id, last_turn_at DESC, id DESC);
