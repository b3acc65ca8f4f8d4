//! `aion-kanban`: the runtime kanban core over RabbitMQ.
