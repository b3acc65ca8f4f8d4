fn main() {
    println!("aion-kanban: not built yet");
}
