"""The metadata store's schema, as an ordered list of versioned migrations.

Each migration runs once, in its own transaction, and is recorded in `schema_migrations`.
Never edit a migration that has shipped: append a new one. Table names are defined here
and imported everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLES = "samples"
REJECTIONS = "rejections"
EMBEDDINGS = "embeddings"
CLUSTERINGS = "clusterings"
CLUSTERS = "clusters"
CLUSTER_MEMBERS = "cluster_members"
SCORES = "scores"
MIGRATIONS = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS_LIST: tuple[Migration, ...] = (
    Migration(1, "backbone: samples, rejections, embeddings, clusterings, scores", f"""
        CREATE TABLE {SAMPLES} (
            sample_id     VARCHAR PRIMARY KEY,
            content_hash  VARCHAR NOT NULL,   -- exact text: keys the embedding cache
            dedup_key     VARCHAR NOT NULL,   -- normalized prompt + response
            problem_key   VARCHAR NOT NULL,   -- normalized prompt alone
            prompt        VARCHAR NOT NULL,
            response      VARCHAR NOT NULL,
            answer        VARCHAR,
            category      VARCHAR,
            source        VARCHAR NOT NULL,   -- 'champ', a file stem, 'synthesis'
            source_ref    VARCHAR,            -- file:line or id in the source
            origin        VARCHAR NOT NULL,   -- 'seed' | 'synthetic'
            split         VARCHAR NOT NULL,   -- 'pool' | 'holdout'
            round         INTEGER,            -- synthesis round, NULL for seed data
            meta          JSON,
            run_id        VARCHAR,
            created_at    TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {REJECTIONS} (
            source        VARCHAR NOT NULL,
            source_ref    VARCHAR,
            line          INTEGER,
            reason        VARCHAR NOT NULL,
            raw           VARCHAR,
            duplicate_of  VARCHAR,
            run_id        VARCHAR,
            created_at    TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {EMBEDDINGS} (
            content_hash      VARCHAR NOT NULL,
            embedding_key     VARCHAR NOT NULL,  -- hash of model, projection, gradient spec
            model_fingerprint VARCHAR NOT NULL,
            projection_key    VARCHAR NOT NULL,
            gradient_spec     JSON NOT NULL,
            dim               INTEGER NOT NULL,
            vector            FLOAT[],           -- L2-normalized; NULL when error is set
            grad_norm         DOUBLE,
            loss              DOUBLE,
            n_response_tokens INTEGER,
            truncated         BOOLEAN,
            seconds           DOUBLE,
            error             VARCHAR,
            run_id            VARCHAR,
            created_at        TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (content_hash, embedding_key)
        );
        CREATE TABLE {CLUSTERINGS} (
            clustering_id   VARCHAR PRIMARY KEY,  -- hash of scope, members, embedding key, config
            scope           VARCHAR NOT NULL,     -- 'seed', 'round:3', ...
            embedding_key   VARCHAR NOT NULL,
            k               INTEGER NOT NULL,
            n               INTEGER NOT NULL,
            niter           INTEGER NOT NULL,
            seed            INTEGER NOT NULL,
            sparse_ratio    DOUBLE NOT NULL,
            threshold_size  INTEGER NOT NULL,
            n_sparse        INTEGER NOT NULL,
            config          JSON,
            run_id          VARCHAR,
            created_at      TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {CLUSTERS} (
            clustering_id   VARCHAR NOT NULL,
            cluster         INTEGER NOT NULL,
            size            INTEGER NOT NULL,
            is_sparse       BOOLEAN NOT NULL,
            centroid        FLOAT[] NOT NULL,
            PRIMARY KEY (clustering_id, cluster)
        );
        CREATE TABLE {CLUSTER_MEMBERS} (
            clustering_id   VARCHAR NOT NULL,
            sample_id       VARCHAR NOT NULL,
            cluster         INTEGER NOT NULL,
            similarity      DOUBLE NOT NULL,
            PRIMARY KEY (clustering_id, sample_id)
        );
        CREATE TABLE {SCORES} (
            score_id        VARCHAR PRIMARY KEY,  -- hash of scope, metric, q, members, embedding key
            scope           VARCHAR NOT NULL,
            metric          VARCHAR NOT NULL,     -- 'g_vendi'
            q               DOUBLE NOT NULL,
            value           DOUBLE NOT NULL,
            entropy         DOUBLE NOT NULL,
            n               INTEGER NOT NULL,
            dim             INTEGER NOT NULL,
            n_excluded      INTEGER NOT NULL,     -- samples without a valid vector
            embedding_key   VARCHAR NOT NULL,
            config          JSON,
            run_id          VARCHAR,
            created_at      TIMESTAMP DEFAULT current_timestamp
        );
    """),
)

LATEST_VERSION = MIGRATIONS_LIST[-1].version
