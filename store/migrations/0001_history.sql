-- Conversation history (docs/data.md): users, their sessions, each session's turns and
-- the turn's two messages. Deleting a user deletes their sessions; deleting a session
-- deletes its turns and messages.

CREATE TABLE users (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id            text PRIMARY KEY,
    user_id       text REFERENCES users (id) ON DELETE CASCADE,  -- NULL: not known yet
    started_at    timestamptz NOT NULL,
    last_turn_at  timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE turns (
    session_id  text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn        text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    outcome     text CHECK (outcome IN ('done', 'cancelled')),
    stt_ms      double precision,
    llm_ms      double precision,
    first_ms    double precision,
    input       text CHECK (input IN ('voice', 'text')),
    workers     jsonb NOT NULL DEFAULT '{}'::jsonb,  -- {stage: "kind@host:pid"}
    PRIMARY KEY (session_id, turn)
);

CREATE TABLE messages (
    session_id  text NOT NULL,
    turn        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('user', 'assistant')),
    text        text NOT NULL,
    created_at  timestamptz NOT NULL,
    cancelled   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (session_id, turn, role),
    FOREIGN KEY (session_id, turn) REFERENCES turns (session_id, turn) ON DELETE CASCADE
);
