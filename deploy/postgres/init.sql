-- One database and one role per service; each role owns (and so migrates) only its own database.
-- Runs once, when the postgres container initialises an empty data directory.
-- Development passwords: <role>-dev. Not tested here (no Docker engine on our machines).
CREATE ROLE svc_order LOGIN PASSWORD 'svc_order-dev';
CREATE ROLE svc_dispatch LOGIN PASSWORD 'svc_dispatch-dev';
CREATE ROLE svc_notification LOGIN PASSWORD 'svc_notification-dev';
CREATE ROLE svc_erp LOGIN PASSWORD 'svc_erp-dev';

CREATE DATABASE spine_order OWNER svc_order;
CREATE DATABASE spine_dispatch OWNER svc_dispatch;
CREATE DATABASE spine_notification OWNER svc_notification;
CREATE DATABASE spine_erp OWNER svc_erp;

-- No service can even connect to another service's database.
REVOKE CONNECT ON DATABASE spine_order FROM PUBLIC;
REVOKE CONNECT ON DATABASE spine_dispatch FROM PUBLIC;
REVOKE CONNECT ON DATABASE spine_notification FROM PUBLIC;
REVOKE CONNECT ON DATABASE spine_erp FROM PUBLIC;
GRANT CONNECT ON DATABASE spine_order TO svc_order;
GRANT CONNECT ON DATABASE spine_dispatch TO svc_dispatch;
GRANT CONNECT ON DATABASE spine_notification TO svc_notification;
GRANT CONNECT ON DATABASE spine_erp TO svc_erp;
