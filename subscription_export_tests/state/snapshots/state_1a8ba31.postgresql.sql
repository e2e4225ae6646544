CREATE TABLE watermarks (
	consumer VARCHAR(100) NOT NULL, 
	lsn BIGINT NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (consumer)
);

CREATE TABLE windows (
	key VARCHAR(41) NOT NULL, 
	lo BIGINT NOT NULL, 
	hi BIGINT NOT NULL, 
	changes BIGINT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (key), 
	UNIQUE (lo), 
	UNIQUE (hi)
);

CREATE TABLE window_exports (
	consumer VARCHAR(100) NOT NULL, 
	window_key VARCHAR(41) NOT NULL, 
	lo BIGINT NOT NULL, 
	hi BIGINT NOT NULL, 
	rows BIGINT NOT NULL, 
	bytes BIGINT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	path TEXT NOT NULL, 
	completed_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (consumer, window_key)
);

CREATE INDEX window_exports_by_lo ON window_exports (consumer, lo);

CREATE TABLE quarantine (
	id SERIAL NOT NULL, 
	window_key VARCHAR(41) NOT NULL, 
	lsn BIGINT NOT NULL, 
	field VARCHAR(200), 
	reason TEXT NOT NULL, 
	raw TEXT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT quarantine_once_per_window UNIQUE (window_key, lsn)
);

CREATE TABLE leases (
	name VARCHAR(200) NOT NULL, 
	holder VARCHAR(200) NOT NULL, 
	acquired_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (name)
);

CREATE TABLE schema_registry (
	dataset VARCHAR(100) NOT NULL, 
	version INTEGER NOT NULL, 
	fields TEXT NOT NULL, 
	arrow_schema TEXT NOT NULL, 
	first_lsn BIGINT NOT NULL, 
	registered_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (dataset, version)
);

CREATE TABLE export_metrics (
	consumer VARCHAR(100) NOT NULL, 
	window_key VARCHAR(41) NOT NULL, 
	lsn_from BIGINT NOT NULL, 
	lsn_to BIGINT NOT NULL, 
	records BIGINT NOT NULL, 
	records_created BIGINT NOT NULL, 
	records_updated BIGINT NOT NULL, 
	records_deleted BIGINT NOT NULL, 
	bytes BIGINT NOT NULL, 
	duration_s FLOAT NOT NULL, 
	rows_per_s FLOAT, 
	latency_p50_s FLOAT, 
	latency_p95_s FLOAT, 
	latency_max_s FLOAT, 
	errors BIGINT NOT NULL, 
	retries BIGINT NOT NULL, 
	dead_letters BIGINT NOT NULL, 
	quarantined BIGINT NOT NULL, 
	conflicts TEXT NOT NULL, 
	schema_version INTEGER, 
	finished_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (consumer, window_key)
);

CREATE INDEX export_metrics_by_time ON export_metrics (finished_at);

CREATE TABLE capture_lag (
	id SERIAL NOT NULL, 
	sampled_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	last_lsn BIGINT NOT NULL, 
	last_change_at TIMESTAMP WITH TIME ZONE, 
	last_sequenced_at TIMESTAMP WITH TIME ZONE, 
	waiting BIGINT NOT NULL, 
	horizon_stall_s FLOAT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX capture_lag_by_time ON capture_lag (sampled_at);

CREATE TABLE reconcile_metrics (
	system VARCHAR(100) NOT NULL, 
	cursor_from BIGINT NOT NULL, 
	cursor_to BIGINT NOT NULL, 
	outcomes TEXT NOT NULL, 
	written_back BIGINT NOT NULL, 
	pushed BIGINT NOT NULL, 
	finished_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (system, cursor_from, cursor_to)
);

CREATE INDEX reconcile_metrics_by_time ON reconcile_metrics (finished_at);

CREATE TABLE dead_letters (
	id SERIAL NOT NULL, 
	destination VARCHAR(100) NOT NULL, 
	window_key VARCHAR(41) NOT NULL, 
	lsn BIGINT NOT NULL, 
	subscription_id VARCHAR(200) NOT NULL, 
	idempotency_key VARCHAR(300) NOT NULL, 
	payload TEXT NOT NULL, 
	error TEXT NOT NULL, 
	attempts INTEGER NOT NULL, 
	first_seen TIMESTAMP WITH TIME ZONE NOT NULL, 
	last_seen TIMESTAMP WITH TIME ZONE NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT dead_letters_once_per_change UNIQUE (destination, lsn)
);

CREATE INDEX dead_letters_by_window ON dead_letters (destination, window_key, status);

CREATE TABLE sync_base (
	destination VARCHAR(100) NOT NULL, 
	subscription_id VARCHAR(200) NOT NULL, 
	held_record TEXT NOT NULL, 
	held_version BIGINT, 
	agreed_record TEXT NOT NULL, 
	log_id BIGINT NOT NULL, 
	remote_cursor BIGINT NOT NULL, 
	feed_record TEXT, 
	feed_version BIGINT, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (destination, subscription_id)
);

CREATE TABLE sync_feed_cursors (
	system VARCHAR(100) NOT NULL, 
	applied BIGINT NOT NULL, 
	requested BIGINT NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (system)
);

CREATE TABLE sync_pushes (
	id SERIAL NOT NULL, 
	idempotency_key VARCHAR(400) NOT NULL, 
	destination VARCHAR(100) NOT NULL, 
	subscription_id VARCHAR(200) NOT NULL, 
	window_key VARCHAR(300) NOT NULL, 
	lsn BIGINT NOT NULL, 
	record TEXT NOT NULL, 
	delete_version BIGINT, 
	plan_log_id BIGINT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	error TEXT, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (idempotency_key)
);

CREATE INDEX sync_pushes_pending ON sync_pushes (destination, status);

CREATE TABLE sync_field_provenance (
	subscription_id VARCHAR(200) NOT NULL, 
	field VARCHAR(200) NOT NULL, 
	value TEXT NOT NULL, 
	system VARCHAR(100) NOT NULL, 
	changed_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (subscription_id, field)
);

CREATE TABLE sync_conflicts (
	id SERIAL NOT NULL, 
	destination VARCHAR(100) NOT NULL, 
	subscription_id VARCHAR(200) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	strategy VARCHAR(32) NOT NULL, 
	fields TEXT NOT NULL, 
	base TEXT NOT NULL, 
	base_log_id BIGINT NOT NULL, 
	local TEXT NOT NULL, 
	local_changed_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	remote TEXT NOT NULL, 
	remote_changed_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	remote_version BIGINT, 
	opened_cursor BIGINT NOT NULL, 
	cursor BIGINT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	resolved_at TIMESTAMP WITH TIME ZONE, 
	resolution TEXT, 
	PRIMARY KEY (id), 
	CONSTRAINT conflict_once UNIQUE (destination, subscription_id, opened_cursor)
);

CREATE INDEX sync_conflicts_open ON sync_conflicts (destination, subscription_id, status);

CREATE TABLE sync_audit (
	id SERIAL NOT NULL, 
	at TIMESTAMP WITH TIME ZONE NOT NULL, 
	destination VARCHAR(100) NOT NULL, 
	subscription_id VARCHAR(200) NOT NULL, 
	ref VARCHAR(100) NOT NULL, 
	strategy VARCHAR(32) NOT NULL, 
	outcome VARCHAR(32) NOT NULL, 
	base TEXT NOT NULL, 
	local TEXT NOT NULL, 
	remote TEXT NOT NULL, 
	merged TEXT NOT NULL, 
	detail TEXT NOT NULL, 
	conflict_id INTEGER, 
	PRIMARY KEY (id), 
	CONSTRAINT audit_once UNIQUE (destination, subscription_id, ref)
);

CREATE INDEX sync_audit_by_subscription ON sync_audit (subscription_id, id);

